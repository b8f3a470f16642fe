package portcullis_test

import rego.v1

import data.portcullis.decision

agent(tier, maturity) := {
	"id": "a", "tier": tier, "maturity": maturity, "workspace": "w",
	"labels": {}, "auth": "api_key",
}

model_input(tier, maturity, action, model) := {
	"agent": agent(tier, maturity),
	"action": action,
	"resource": {"type": "model", "name": model, "upstream": "openai"},
	"request": {"api": "openai", "stream": false},
}

tool_input(tier, maturity, action, name, annotations) := {
	"agent": agent(tier, maturity),
	"action": action,
	"resource": {"type": "tool", "name": name, "server": "orders", "annotations": annotations},
	"request": {"api": "mcp", "stream": false},
}

read_orders := {"readOnlyHint": true}

refund_order := {}

delete_customer := {"destructiveHint": true}

test_decision_shape_on_allow if {
	d := decision with input as model_input(1, "intern", "llm.chat", "gpt-4o-mini")
	d == {
		"allow": true, "reasons": [], "cache_ttl_s": 60,
		"obligations": {"max_output_tokens": 2048, "requests_per_minute": 60, "tokens_per_minute": 40000},
	}
}

test_obligations_kept_on_deny if {
	d := decision with input as model_input(1, "intern", "llm.chat", "gpt-4o")
	d.allow == false
	d.obligations.max_output_tokens == 2048
	d.cache_ttl_s == 60
}

test_cache_ttl_from_data if {
	d := decision with input as model_input(1, "intern", "llm.chat", "gpt-4o-mini")
		with data.portcullis.config.cache_ttl_s as 5
	d.cache_ttl_s == 5
}

test_empty_input_denied if {
	d := decision with input as {}
	d.allow == false
	"unknown action null" in d.reasons
	"unknown tier null" in d.reasons
	"unknown maturity null" in d.reasons
	d.obligations == {}
}

test_malformed_input_denied_not_error if {
	d := decision with input as {"agent": "x", "action": 5, "resource": []}
	d.allow == false
	"unknown action 5" in d.reasons
}

test_unknown_action_denied if {
	d := decision with input as model_input(4, "autonomous", "llm.images", "dall-e-3")
	d.allow == false
	d.reasons == ["unknown action llm.images"]
}

test_unknown_tier_and_maturity_denied if {
	d := decision with input as model_input(9, "expert", "llm.chat", "gpt-4o-mini")
	d.allow == false
	d.reasons == ["unknown maturity expert", "unknown tier 9"]
}

# observer: T0 student lists models and embeds, may not chat.
test_observer_lists_models if {
	decision.allow with input as model_input(0, "student", "llm.models", "gpt-4o-mini")
}

test_observer_listing_hides_higher_models if {
	d := decision with input as model_input(0, "student", "llm.models", "gpt-4o")
	d.reasons == ["tier 0 may not use model gpt-4o"]
}

test_listing_without_model_name_allowed if {
	decision.allow with input as {"agent": agent(0, "student"), "action": "llm.models", "resource": {"type": "model"}}
}

test_observer_embeds if {
	decision.allow with input as model_input(0, "student", "llm.embedding", "text-embedding-3-small")
}

test_observer_may_not_chat if {
	d := decision with input as model_input(0, "student", "llm.chat", "gpt-4o-mini")
	d.allow == false
	d.reasons == ["maturity student below required intern for llm.chat"]
}

test_student_may_not_use_any_chat_api if {
	every a in ["llm.chat", "llm.completion", "llm.messages", "llm.responses"] {
		not decision.allow with input as model_input(4, "student", a, "gpt-4o-mini")
	}
}

# intern-bot: T1 intern chats gpt-4o-mini, refused gpt-4o.
test_intern_chats_small_model if {
	decision.allow with input as model_input(1, "intern", "llm.chat", "gpt-4o-mini")
	decision.allow with input as model_input(1, "intern", "llm.messages", "claude-3-5-haiku-latest")
}

test_intern_refused_gpt4o if {
	d := decision with input as model_input(1, "intern", "llm.chat", "gpt-4o")
	d.allow == false
	d.reasons == ["tier 1 may not use model gpt-4o"]
}

test_builder_uses_tier2_models if {
	decision.allow with input as model_input(2, "supervised", "llm.chat", "gpt-4o")
	decision.allow with input as model_input(2, "supervised", "llm.messages", "claude-sonnet-4-5")
	d := decision with input as model_input(2, "supervised", "llm.chat", "o3-mini")
	d.reasons == ["tier 2 may not use model o3-mini"]
}

test_executor_uses_reasoning_models if {
	decision.allow with input as model_input(3, "supervised", "llm.responses", "o3-mini")
	not decision.allow with input as model_input(3, "supervised", "llm.chat", "gpt-5")
}

test_architect_uses_any_model if {
	decision.allow with input as model_input(4, "autonomous", "llm.chat", "gpt-5")
}

test_both_reasons_reported if {
	d := decision with input as model_input(0, "student", "llm.chat", "gpt-4o")
	d.reasons == ["maturity student below required intern for llm.chat", "tier 0 may not use model gpt-4o"]
}

test_chat_needs_model_name if {
	d := decision with input as {"agent": agent(4, "autonomous"), "action": "llm.chat", "resource": {"type": "model"}}
	d.reasons == ["llm.chat needs a model name"]
}

test_obligations_follow_tier if {
	every t in [0, 1, 2, 3, 4] {
		d := decision with input as model_input(t, "autonomous", "llm.models", "gpt-4o-mini")
		d.obligations == data.portcullis.config.tiers[format_int(t, 10)].obligations
	}
}

# Tools (issue 4): observer none, intern read_orders, builder/executor read+refund, architect all.
test_observer_sees_no_tools if {
	d := decision with input as tool_input(0, "student", "tool.list", "read_orders", read_orders)
	d.reasons == ["tier 0 may not use server orders (minimum tier 1)"]
	e := decision with input as {"agent": agent(0, "student"), "action": "tool.list", "resource": {"type": "tool"}}
	e.reasons == ["tier 0 may not use tool servers (minimum tier 1)"]
}

test_intern_calls_read_only_tool if {
	decision.allow with input as tool_input(1, "intern", "tool.call", "read_orders", read_orders)
	d := decision with input as tool_input(1, "intern", "tool.call", "refund_order", refund_order)
	d.reasons == ["maturity intern below required supervised for tool.call refund_order"]
}

# From tier 3 a supervised agent's destructive call waits for approval instead (lifecycle_test.rego).
test_supervised_calls_state_changing_tool if {
	every t in [2, 3] {
		decision.allow with input as tool_input(t, "supervised", "tool.call", "read_orders", read_orders)
		decision.allow with input as tool_input(t, "supervised", "tool.call", "refund_order", refund_order)
	}
	d := decision with input as tool_input(2, "supervised", "tool.call", "delete_customer", delete_customer)
	d.reasons == ["maturity supervised below required autonomous for tool.call delete_customer"]
}

test_autonomous_calls_destructive_tool if {
	decision.allow with input as tool_input(4, "autonomous", "tool.call", "delete_customer", delete_customer)
}

test_tool_list_allowed_from_tier1_student if {
	decision.allow with input as tool_input(1, "student", "tool.list", "delete_customer", delete_customer)
}

test_tool_call_needs_tool_resource if {
	d := decision with input as model_input(4, "autonomous", "tool.call", "gpt-4o")
	"tool.call needs a tool resource" in d.reasons
	d.allow == false
}

test_server_min_tier_denies if {
	d := decision with input as tool_input(2, "autonomous", "tool.call", "read_orders", read_orders)
		with data.portcullis.config.tool_servers.orders.min_tier as 3
	d.reasons == ["tier 2 may not use server orders (minimum tier 3)"]
}

mcp_input(t, m, action, resource) := {"agent": agent(t, m), "action": action, "resource": resource}

orders_server := {"type": "mcp_server", "name": "orders", "server": "orders"}

test_session_housekeeping_open_to_every_tier if {
	every action in ["mcp.initialize", "mcp.ping", "mcp.notify", "mcp.respond", "mcp.stream", "mcp.session.close"] {
		decision.allow with input as mcp_input(0, "student", action, orders_server)
	}
}

test_resources_need_server_reach_and_maturity if {
	uri := {"type": "resource", "name": "orders://recent", "server": "orders"}
	d := decision with input as mcp_input(0, "intern", "mcp.resources.read", uri)
	d.reasons == ["tier 0 may not use server orders (minimum tier 1)"]
	e := decision with input as mcp_input(1, "student", "mcp.resources.read", uri)
	e.reasons == ["maturity student below required intern for mcp.resources.read"]
	decision.allow with input as mcp_input(1, "intern", "mcp.resources.read", uri)
	decision.allow with input as mcp_input(1, "student", "mcp.resources.list", orders_server)
}

test_prompts_need_server_reach if {
	p := {"type": "prompt", "name": "refund_note", "server": "orders"}
	d := decision with input as mcp_input(0, "autonomous", "mcp.prompts.get", p)
	d.reasons == ["tier 0 may not use server orders (minimum tier 1)"]
	decision.allow with input as mcp_input(2, "supervised", "mcp.prompts.get", p)
}

test_unknown_mcp_method_denied if {
	d := decision with input as mcp_input(4, "autonomous", "mcp.sampling.createMessage", orders_server)
	d.reasons == ["unknown action mcp.sampling.createMessage"]
}

test_tool_call_needs_tool_name if {
	d := decision with input as {"agent": agent(4, "autonomous"), "action": "tool.call", "resource": {"type": "tool", "server": "orders"}}
	d.allow == false
	d.reasons == ["tool.call needs a tool name"]
	e := decision with input as tool_input(4, "autonomous", "tool.call", 42, {})
	e.reasons == ["tool.call needs a tool name"]
}

test_architect_uses_dotted_slashed_and_colon_models if {
	every model in ["gpt-4.1-nano", "gemini-1.5-pro", "claude-sonnet-4.5", "openai/gpt-4o", "llama3:8b"] {
		decision.allow with input as model_input(4, "autonomous", "llm.chat", model)
	}
	decision.allow with input as model_input(2, "intern", "llm.messages", "claude-sonnet-4.5")
	d := decision with input as model_input(3, "autonomous", "llm.chat", "gemini-1.5-pro")
	d.reasons == ["tier 3 may not use model gemini-1.5-pro"]
}

# llm.count_tokens (Anthropic's /v1/messages/count_tokens) is cheap: complexity 1,
# like llm.models, for the models the tier may use.
test_count_tokens_for_reachable_models if {
	decision.allow with input as model_input(0, "student", "llm.count_tokens", "gpt-4o-mini")
	decision.allow with input as model_input(1, "student", "llm.count_tokens", "claude-haiku-4-5")
	d := decision with input as model_input(1, "student", "llm.count_tokens", "claude-sonnet-4-5")
	d.reasons == ["tier 1 may not use model claude-sonnet-4-5"]
	e := decision with input as {"agent": agent(1, "student"), "action": "llm.count_tokens", "resource": {"type": "model"}}
	e.reasons == ["llm.count_tokens needs a model name"]
}

# A complexity the config maps to no maturity must deny, never switch the check off.
test_out_of_range_complexity_fails_closed if {
	every c in [0, 5, "2", 2.5, null] {
		d := decision with input as model_input(4, "autonomous", "llm.chat", "gpt-4o-mini")
			with data.portcullis.config.action_complexity as {"llm.chat": c}
		d.allow == false
		d.reasons == ["no required maturity is configured for llm.chat"]
	}
}

test_out_of_range_tool_complexity_fails_closed if {
	d := decision with input as tool_input(4, "autonomous", "tool.call", "refund_order", refund_order)
		with data.portcullis.config.tool_servers.orders.tool_complexity as {"refund_order": 7}
	d.reasons == ["no required maturity is configured for tool.call refund_order"]
	e := decision with input as tool_input(4, "autonomous", "tool.call", "read_orders", read_orders)
		with data.portcullis.config.min_maturity_for_complexity as {"1": "student", "2": "junior"}
	e.reasons == ["no required maturity is configured for tool.call read_orders"]
}
