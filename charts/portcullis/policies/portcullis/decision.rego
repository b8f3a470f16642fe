# METADATA
# title: Portcullis decision
# description: |
#   Entry point data.portcullis.decision. Always an object: allow, reasons (why
#   a request is denied; empty when allowed), obligations (the tier's limits,
#   also on deny so the audit shows what would have applied; empty for an
#   unknown tier) and cache_ttl_s; and, when they apply, violation and
#   approval (lifecycle.rego).
package portcullis

import rego.v1

import data.portcullis.maturity
import data.portcullis.tiers

cfg := data.portcullis.config

# Non-object parts become {} so object.get below never raises on odd input.
agent := a if {
	a := input.agent
	is_object(a)
} else := {}

tier := object.get(agent, ["tier"], null)

agent_maturity := object.get(agent, ["maturity"], null)

# Non-string actions become "" so string builtins below never raise.
action := a if {
	a := input.action
	is_string(a)
} else := ""

resource := r if {
	r := input.resource
	is_object(r)
} else := {}

resource_type := object.get(resource, ["type"], null)

resource_name := object.get(resource, ["name"], null)

# Fallback only: a fault in the rules below should still yield a deny object.
default decision := {
	"allow": false,
	"reasons": ["policy could not reach a decision"],
	"obligations": {},
	"cache_ttl_s": 0,
}

# METADATA
# title: Decision
# description: The document the gateway reads for every request.
decision := object.union(
	{
		"allow": count(deny) == 0,
		"reasons": sort(deny),
		"obligations": tiers.obligations(tier),
		"cache_ttl_s": cfg.cache_ttl_s,
	},
	lifecycle_fields,
)

# Names the target of an action in reasons: "tool.call refund_order", "llm.chat".
target := sprintf("%s %s", [action, resource_name]) if {
	startswith(action, "tool.")
	is_string(resource_name)
}

target := action if not tool_target

tool_target if {
	startswith(action, "tool.")
	is_string(resource_name)
}

# METADATA
# title: Deny reasons
# description: Every reason the request is refused; the request is allowed when there is none.
deny contains sprintf("unknown action %v", [object.get(input, ["action"], null)]) if not maturity.known_action(action)

deny contains sprintf("unknown tier %v", [tier]) if not tiers.known(tier)

deny contains sprintf("unknown maturity %v", [agent_maturity]) if not maturity.known(agent_maturity)

# Undefined for an unknown action, or a complexity the config maps to no known maturity.
required_maturity := maturity.required_for(action, resource) if maturity.known_action(action)

deny contains msg if {
	maturity_forbids
	msg := sprintf("maturity %s below required %s for %s", [agent_maturity, required_maturity, target])
}

# Fail closed: a complexity with no required maturity (0, 5, "2" in the data, a
# missing entry) must not switch the maturity check off.
deny contains msg if {
	maturity.known_action(action)
	not required_maturity
	msg := sprintf("no required maturity is configured for %s", [target])
}

deny contains msg if {
	startswith(action, "llm.")
	action != "llm.models"
	not is_string(resource_name)
	msg := sprintf("%s needs a model name", [action])
}

deny contains msg if {
	startswith(action, "tool.")
	resource_type != "tool"
	msg := sprintf("%s needs a tool resource", [action])
}

deny contains msg if {
	action == "tool.call"
	not is_string(resource_name)
	msg := "tool.call needs a tool name"
}

# Model reach applies to every model-typed resource, listing included, so the
# gateway can filter /v1/models by asking once per model.
deny contains msg if {
	tiers.known(tier)
	resource_type == "model"
	is_string(resource_name)
	not tiers.model_allowed(tier, resource_name)
	msg := sprintf("tier %d may not use model %s", [tier, resource_name])
}

# Tools, and the resources and prompts an MCP server offers, are reachable only
# from the server's minimum tier up; session housekeeping (initialize, ping,
# notifications) is not, so a low tier can connect and simply sees no tools.
server_content(action) if startswith(action, "tool.")

server_content(action) if action in cfg.mcp_server_content_actions

deny contains msg if {
	tiers.known(tier)
	server_content(action)
	server := object.get(resource, ["server"], null)
	not tiers.tool_allowed(tier, server)
	msg := tool_reach_reason(server)
}

tool_reach_reason(server) := sprintf("tier %d may not use server %s (minimum tier %d)", [tier, server, tiers.tool_min_tier(server)]) if is_string(server)

tool_reach_reason(server) := sprintf("tier %d may not use tool servers (minimum tier %d)", [tier, tiers.tool_min_tier(null)]) if not is_string(server)
