package portcullis.maturity_test

import rego.v1

import data.portcullis.maturity

tool(name, annotations) := {"type": "tool", "name": name, "server": "orders", "annotations": annotations}

test_rank_order if {
	maturity.rank.student < maturity.rank.intern
	maturity.rank.intern < maturity.rank.supervised
	maturity.rank.supervised < maturity.rank.autonomous
	not maturity.known("expert")
}

test_known_actions if {
	every a in ["llm.models", "llm.count_tokens", "llm.chat", "llm.completion", "llm.embedding", "llm.messages", "llm.responses", "tool.list", "tool.call"] {
		maturity.known_action(a)
	}
	not maturity.known_action("llm.images")
	not maturity.known_action("")
}

test_complexity_1_actions if {
	every a in ["llm.models", "llm.count_tokens", "llm.embedding", "tool.list"] {
		maturity.complexity(a, {}) == 1
	}
}

test_complexity_2_actions if {
	every a in ["llm.chat", "llm.completion", "llm.messages", "llm.responses"] {
		maturity.complexity(a, {}) == 2
	}
}

test_unknown_action_has_no_complexity if {
	not maturity.complexity("llm.images", {})
}

test_tool_complexity_from_hints if {
	maturity.complexity("tool.call", tool("read_orders", {"readOnlyHint": true})) == 2
	maturity.complexity("tool.call", tool("refund_order", {})) == 3
	maturity.complexity("tool.call", tool("refund_order", {"readOnlyHint": false})) == 3
	maturity.complexity("tool.call", tool("delete_customer", {"destructiveHint": true})) == 4
	maturity.complexity("tool.call", {"type": "tool", "name": "x", "server": "orders"}) == 3
}

test_listed_tool_overrides_hints if {
	servers := {"orders": {"tool_complexity": {"read_orders": 4}}}
	maturity.complexity("tool.call", tool("read_orders", {"readOnlyHint": true})) == 4 with data.portcullis.config.tool_servers as servers
}

test_untrusted_server_ignores_hints if {
	servers := {"shady": {"trust_annotations": false, "tool_complexity": {"listed": 2}}}
	r := {"type": "tool", "name": "ro", "server": "shady", "annotations": {"readOnlyHint": true}}
	maturity.complexity("tool.call", r) == 3 with data.portcullis.config.tool_servers as servers
	d := {"type": "tool", "name": "rm", "server": "shady", "annotations": {"destructiveHint": true}}
	maturity.complexity("tool.call", d) == 3 with data.portcullis.config.tool_servers as servers
	l := {"type": "tool", "name": "listed", "server": "shady", "annotations": {}}
	maturity.complexity("tool.call", l) == 2 with data.portcullis.config.tool_servers as servers
}

test_required_maturity if {
	maturity.required(1) == "student"
	maturity.required(2) == "intern"
	maturity.required(3) == "supervised"
	maturity.required(4) == "autonomous"
}

test_required_for_actions_and_tools if {
	maturity.required_for("llm.models", {}) == "student"
	maturity.required_for("llm.count_tokens", {}) == "student"
	maturity.required_for("llm.chat", {}) == "intern"
	maturity.required_for("tool.call", tool("read_orders", {"readOnlyHint": true})) == "intern"
	maturity.required_for("tool.call", tool("refund_order", {})) == "supervised"
	maturity.required_for("tool.call", tool("delete_customer", {"destructiveHint": true})) == "autonomous"
	not maturity.required_for("llm.images", {})
}

test_out_of_range_complexity_has_no_required_maturity if {
	every c in [0, 5, -1, 2.5, "2", null, true] {
		not maturity.required(c)
		not maturity.required_for("llm.chat", {}) with data.portcullis.config.action_complexity as {"llm.chat": c}
	}
}

test_required_maturity_must_be_known if {
	not maturity.required_for("llm.chat", {}) with data.portcullis.config.min_maturity_for_complexity as {"2": "junior"}
}

test_missing_annotation_complexity_has_no_required_maturity if {
	not maturity.required_for("tool.call", tool("read_orders", {"readOnlyHint": true})) with data.portcullis.config.tool_annotation_complexity as {"default": 3}
}
