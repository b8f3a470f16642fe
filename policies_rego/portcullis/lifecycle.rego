# What a decision means for the agent's lifecycle (DESIGN contract 6). The
# gateway reads two optional fields of the decision: `violation`, a procedure
# violation it counts against the agent's error budget, and `approval`, a
# refusal an operator may lift once. The budgets themselves, and who may be
# approved, are data: data.portcullis.config.lifecycle.
# (Plain comments: the package's METADATA block is decision.rego's.)
package portcullis

import rego.v1

import data.portcullis.maturity
import data.portcullis.tiers

# Non-object settings become {} so object.get below never raises on odd data.
approval_cfg := a if {
	a := object.get(cfg, ["lifecycle", "approval"], {})
	is_object(a)
} else := {}

approval_maturities := m if {
	m := object.get(approval_cfg, ["maturities"], [])
	is_array(m)
} else := []

approval_min_tier := object.get(approval_cfg, ["destructive_min_tier"], null)

# METADATA
# title: Tool call
# description: A tool.call naming its tool.
tool_call if {
	action == "tool.call"
	resource_type == "tool"
	is_string(resource_name)
}

# METADATA
# title: Maturity too low
# description: The agent's maturity is below the one its action requires (the maturity denial).
maturity_forbids if {
	maturity.known(agent_maturity)
	maturity.rank[agent_maturity] < maturity.rank[required_maturity]
}

# METADATA
# title: Tool server out of reach
# description: The agent's tier is below the tool server's minimum tier.
tier_forbids_tool if {
	tiers.known(tier)
	not tiers.tool_allowed(tier, object.get(resource, ["server"], null))
}

# METADATA
# title: Destructive tool
# description: The tool's complexity is the one the config gives destructive tools (4 by default).
destructive_tool if maturity.complexity(action, resource) == cfg.tool_annotation_complexity.destructive

# METADATA
# title: Forbidden tool call
# description: A tool call the agent's tier or maturity forbids.
forbidden_tool_call if {
	tool_call
	maturity_forbids
}

forbidden_tool_call if {
	tool_call
	tier_forbids_tool
}

# METADATA
# title: Destructive tool call by an unfit agent
# description: A destructive tool call by an agent whose maturity may not make it (not autonomous, by default).
unfit_destructive_call if {
	tool_call
	destructive_tool
	maturity_forbids
}

# METADATA
# title: Approval required
# description: |
#   A destructive tool call by an agent whose maturity is listed in
#   lifecycle.approval.maturities, at lifecycle.approval.destructive_min_tier or
#   above, when the maturity check is its only denial: an approval could not
#   lift any other (a server out of reach stays a violation).
approval_required if {
	unfit_destructive_call
	agent_maturity in approval_maturities
	is_number(approval_min_tier)
	tiers.known(tier)
	tier >= approval_min_tier
	count(deny) == 1
}

# METADATA
# title: Procedure violation
# description: |
#   The violation a denial carries, the most severe that applies: a destructive
#   tool call by an unfit agent (CRITICAL) before a tool call its tier or
#   maturity forbids (HIGH). A request waiting for approval carries none, and
#   neither does an ordinary denial such as a model out of the tier's reach.
violation := {"kind": "destructive_tool", "severity": "CRITICAL"} if {
	unfit_destructive_call
	not approval_required
}

violation := {"kind": "forbidden_tool", "severity": "HIGH"} if {
	forbidden_tool_call
	not unfit_destructive_call
}

# METADATA
# title: Approval
# description: The approval object of a decision that needs one; the reason is shown to the agent.
approval := {
	"required": true,
	"reason": sprintf("%s is destructive: a %s agent at tier %d needs an operator's approval", [target, agent_maturity, tier]),
} if approval_required

# The decision's optional lifecycle fields: at most one of them applies.
lifecycle_fields := {"violation": violation} if violation

lifecycle_fields := {"approval": approval} if approval_required

lifecycle_fields := {} if {
	not violation
	not approval_required
}
