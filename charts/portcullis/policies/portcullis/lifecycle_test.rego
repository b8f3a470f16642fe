package portcullis_test

import rego.v1

import data.portcullis.decision

# tool_input, model_input and the annotations are decision_test.rego's (same package).

test_ordinary_denial_carries_no_violation if {
	d := decision with input as model_input(1, "intern", "llm.chat", "gpt-4o")
	d.allow == false
	not d.violation
	not d.approval
}

test_allowed_decision_has_exactly_the_base_fields if {
	d := decision with input as tool_input(4, "autonomous", "tool.call", "delete_customer", delete_customer)
	d.allow == true
	object.keys(d) == {"allow", "reasons", "obligations", "cache_ttl_s"}
}

test_maturity_forbidden_tool_is_a_high_violation if {
	d := decision with input as tool_input(1, "intern", "tool.call", "refund_order", refund_order)
	d.allow == false
	d.violation == {"kind": "forbidden_tool", "severity": "HIGH"}
	d.reasons == ["maturity intern below required supervised for tool.call refund_order"]
	not d.approval
}

test_tier_forbidden_tool_is_a_high_violation if {
	d := decision with input as tool_input(0, "autonomous", "tool.call", "read_orders", read_orders)
	d.violation == {"kind": "forbidden_tool", "severity": "HIGH"}
	d.reasons == ["tier 0 may not use server orders (minimum tier 1)"]
}

test_intern_deleting_a_customer_is_critical if {
	d := decision with input as tool_input(1, "intern", "tool.call", "delete_customer", delete_customer)
	d.allow == false
	d.violation == {"kind": "destructive_tool", "severity": "CRITICAL"}
	d.reasons == ["maturity intern below required autonomous for tool.call delete_customer"]
	not d.approval
}

test_destructive_wins_over_forbidden_tier if {
	d := decision with input as tool_input(0, "student", "tool.call", "delete_customer", delete_customer)
	d.violation == {"kind": "destructive_tool", "severity": "CRITICAL"}
}

test_supervised_below_approval_tier_is_critical if {
	d := decision with input as tool_input(2, "supervised", "tool.call", "delete_customer", delete_customer)
	d.violation == {"kind": "destructive_tool", "severity": "CRITICAL"}
	not d.approval
}

test_supervised_t3_destructive_call_needs_approval if {
	every t in [3, 4] {
		d := decision with input as tool_input(t, "supervised", "tool.call", "delete_customer", delete_customer)
		d.allow == false
		d.approval == {
			"required": true,
			"reason": sprintf("tool.call delete_customer is destructive: a supervised agent at tier %d needs an operator's approval", [t]),
		}
		d.reasons == ["maturity supervised below required autonomous for tool.call delete_customer"]
		not d.violation
		d.obligations == data.portcullis.config.tiers[format_int(t, 10)].obligations
		d.cache_ttl_s == 60
	}
}

test_approval_settings_are_data if {
	d := decision with input as tool_input(3, "supervised", "tool.call", "delete_customer", delete_customer)
		with data.portcullis.config.lifecycle.approval.destructive_min_tier as 4
	d.violation.kind == "destructive_tool"
	not d.approval
	e := decision with input as tool_input(2, "intern", "tool.call", "delete_customer", delete_customer)
		with data.portcullis.config.lifecycle.approval as {"destructive_min_tier": 2, "maturities": ["intern"]}
	e.approval.required == true
	not e.violation
}

test_no_approval_without_lifecycle_data if {
	d := decision with input as tool_input(3, "supervised", "tool.call", "delete_customer", delete_customer)
		with data.portcullis.config.lifecycle as {}
	d.violation.kind == "destructive_tool"
	not d.approval
}

test_approval_never_lifts_another_denial if {
	d := decision with input as tool_input(3, "supervised", "tool.call", "delete_customer", delete_customer)
		with data.portcullis.config.tool_servers.orders.min_tier as 4
	d.violation == {"kind": "destructive_tool", "severity": "CRITICAL"}
	not d.approval
	count(d.reasons) == 2
}

test_listed_destructive_tool_counts_without_hints if {
	d := decision with input as tool_input(1, "intern", "tool.call", "purge", {})
		with data.portcullis.config.tool_servers.orders.tool_complexity as {"purge": 4}
	d.violation.kind == "destructive_tool"
}

test_untrusted_destructive_hint_is_not_destructive if {
	d := decision with input as tool_input(1, "intern", "tool.call", "delete_customer", delete_customer)
		with data.portcullis.config.tool_servers.orders.trust_annotations as false
	d.violation == {"kind": "forbidden_tool", "severity": "HIGH"}
}

test_tool_list_carries_no_violation if {
	d := decision with input as tool_input(0, "student", "tool.list", "delete_customer", delete_customer)
	d.allow == false
	not d.violation
}
