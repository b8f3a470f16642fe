# Tool rules that see the call's arguments (DESIGN contract 2). A server's
# `argument_rules` names the tools whose tool.call input carries
# `resource.arguments` (and so the decision cache key); `argument_limits`
# bounds a numeric argument: above `above`, the call needs `min_tier` and
# `min_maturity`. A tools/list input has no arguments, so these rules never
# fire there: a tool stays listed when some arguments could be allowed.
# An over-limit call is an ordinary denial, never a procedure violation
# (lifecycle.rego): an honest agent may not know the limit.
# (Plain comments: the package's METADATA block is decision.rego's.)
package portcullis

import rego.v1

import data.portcullis.maturity
import data.portcullis.tiers

# Written as iterations over sets, not lookups or value functions that may be
# undefined: regorus' compiled VM mishandles those (see tiers.rego), and the
# gateway runs it.

# METADATA
# title: Limited arguments
# description: |
#   [name, value, limit] for each argument of the tool.call that its server's
#   argument_limits bounds; empty when the input carries no arguments.
limited_arguments contains [name, value, limit] if {
	tool_call
	args := object.get(resource, ["arguments"], null)
	is_object(args)
	limits := object.get(tiers.server(object.get(resource, ["server"], null)), ["argument_limits", resource_name], {})
	is_object(limits)
	some name, limit in limits
	some key, value in args
	key == name
}

# METADATA
# title: Arguments over their limit
# description: "[name, value, limit] for each numeric argument above its limit's `above`."
over_limit contains [name, value, limit] if {
	some [name, value, limit] in limited_arguments
	is_number(value)
	above := object.get(limit, ["above"], null)
	is_number(above)
	value > above
}

# METADATA
# title: Argument limit denials
# description: An over-limit argument from an agent below the limit's tier or maturity.
deny contains msg if {
	some [name, value, limit] in over_limit
	min_tier := object.get(limit, ["min_tier"], null)
	is_number(min_tier)
	not tier_at_least(min_tier)
	msg := sprintf("%s %s %v above %v needs tier %v", [resource_name, name, value, limit.above, min_tier])
}

deny contains msg if {
	some [name, value, limit] in over_limit
	min_maturity := object.get(limit, ["min_maturity"], null)
	is_string(min_maturity)
	not maturity_at_least(min_maturity)
	msg := sprintf("%s %s %v above %v needs maturity %s", [resource_name, name, value, limit.above, min_maturity])
}

# A limited argument that is not a number could still mean a large amount to the
# tool (a server may coerce "250"): refused rather than let past the limit.
deny contains msg if {
	some [name, value, _] in limited_arguments
	not is_number(value)
	msg := sprintf("%s %s must be a number", [resource_name, name])
}

tier_at_least(min_tier) if {
	tiers.known(tier)
	tier >= min_tier
}

# An unknown maturity, the agent's or the limit's, never matches (fail closed).
maturity_at_least(m) if {
	maturity.known(agent_maturity)
	maturity.known(m)
	maturity.rank[agent_maturity] >= maturity.rank[m]
}
