package portcullis_test

import rego.v1

import data.portcullis.decision

# tool_input and the annotations are decision_test.rego's (same package).

refund(tier, maturity, args) := object.union(
	tool_input(tier, maturity, "tool.call", "refund_order", refund_order),
	{"resource": {"type": "tool", "name": "refund_order", "server": "orders", "annotations": refund_order, "arguments": args}},
)

test_small_refund_allowed_at_tier_2 if {
	d := decision with input as refund(2, "supervised", {"order_id": "A-1001", "amount": 10})
	d.allow == true
}

test_limit_itself_is_allowed if {
	decision.allow with input as refund(2, "supervised", {"order_id": "A-1001", "amount": 100})
}

test_large_refund_needs_tier_3 if {
	d := decision with input as refund(2, "supervised", {"order_id": "A-1001", "amount": 250})
	d.allow == false
	d.reasons == ["refund_order amount 250 above 100 needs tier 3"]
}

test_large_refund_is_not_a_violation if {
	d := decision with input as refund(2, "supervised", {"order_id": "A-1001", "amount": 250})
	not d.violation
	not d.approval
}

test_large_refund_allowed_at_tier_3_and_4 if {
	every t in [3, 4] {
		decision.allow with input as refund(t, "supervised", {"order_id": "A-1001", "amount": 250})
	}
}

test_large_refund_needs_supervised_maturity if {
	limits := {"refund_order": {"amount": {"above": 100, "min_tier": 3, "min_maturity": "autonomous"}}}
	servers := {"orders": {"min_tier": 1, "trust_annotations": true, "argument_limits": limits}}
	d := decision with input as refund(3, "supervised", {"order_id": "A-1001", "amount": 250})
		with data.portcullis.config.tool_servers as servers
	d.reasons == ["refund_order amount 250 above 100 needs maturity autonomous"]
}

test_non_number_amount_refused if {
	d := decision with input as refund(4, "autonomous", {"order_id": "A-1001", "amount": "250"})
	d.allow == false
	d.reasons == ["refund_order amount must be a number"]
}

# tools/list and argument-free inputs: the rules need arguments to fire.
test_no_arguments_no_argument_rule if {
	decision.allow with input as tool_input(2, "supervised", "tool.call", "refund_order", refund_order)
	decision.allow with input as tool_input(2, "supervised", "tool.list", "refund_order", refund_order)
}

test_other_tools_ignore_arguments if {
	d := decision with input as object.union(
		tool_input(2, "intern", "tool.call", "read_orders", read_orders),
		{"resource": {"arguments": {"amount": 10000}}},
	)
	d.allow == true
}

test_threshold_is_data if {
	limits := {"refund_order": {"amount": {"above": 500, "min_tier": 3}}}
	servers := {"orders": {"min_tier": 1, "trust_annotations": true, "argument_limits": limits}}
	decision.allow with input as refund(2, "supervised", {"order_id": "A-1001", "amount": 250})
		with data.portcullis.config.tool_servers as servers
}

test_over_limit_maturity_denial_keeps_its_violation if {
	d := decision with input as refund(2, "intern", {"order_id": "A-1001", "amount": 250})
	d.violation == {"kind": "forbidden_tool", "severity": "HIGH"}
	count(d.reasons) == 3
}
