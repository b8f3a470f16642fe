# METADATA
# title: Maturity versus action complexity
# description: |
#   Each action has a complexity (1-4); complexity n needs at least the maturity
#   that data.portcullis.config.min_maturity_for_complexity names for n, and a
#   complexity it names none for is refused (see required_for).
#   Tool calls take their complexity from the config when the tool is listed
#   there, else from its MCP annotations when the server's are trusted.
package portcullis.maturity

import rego.v1

import data.portcullis.tiers

cfg := data.portcullis.config

# METADATA
# title: Maturity rank
# description: Position of each maturity in the configured order (student = 0).
rank[m] := i if some i, m in cfg.maturity_order

# METADATA
# title: Known maturity
known(m) if rank[m]

# METADATA
# title: Known action
# description: An action with a configured complexity, or tool.call (complexity from the tool).
known_action(action) if cfg.action_complexity[action]

known_action(action) if action == "tool.call"

# METADATA
# title: Action complexity
# description: Complexity of an action on a resource; undefined for an unknown action.
complexity(action, resource) := tool_complexity(resource) if action == "tool.call"

complexity(action, _) := cfg.action_complexity[action] if action != "tool.call"

# METADATA
# title: Tool complexity
# description: |
#   Listed per server and tool in the config, else 2 for a read-only hint,
#   4 for a destructive hint (hints count only from trusted servers), else 3.
tool_complexity(resource) := listed_complexity(resource) if listed(resource)

tool_complexity(resource) := cfg.tool_annotation_complexity.read_only if {
	not listed(resource)
	hint(resource, "readOnlyHint")
}

tool_complexity(resource) := cfg.tool_annotation_complexity.destructive if {
	not listed(resource)
	not hint(resource, "readOnlyHint")
	hint(resource, "destructiveHint")
}

tool_complexity(resource) := cfg.tool_annotation_complexity.default if {
	not listed(resource)
	not hint(resource, "readOnlyHint")
	not hint(resource, "destructiveHint")
}

listed_complexity(resource) := tiers.server(object.get(resource, ["server"], null)).tool_complexity[resource.name]

listed(resource) if listed_complexity(resource)

# A hint counts only when true and the server's annotations are trusted.
hint(resource, name) if {
	trusted(resource)
	object.get(resource, ["annotations", name], false) == true
}

trusted(resource) if tiers.server(object.get(resource, ["server"], null)).trust_annotations == true

# METADATA
# title: Required maturity
# description: |
#   The lowest maturity allowed to perform an action of this complexity;
#   undefined for a complexity the config gives no maturity (0, 5, "2").
required(complexity) := cfg.min_maturity_for_complexity[format_int(complexity, 10)] if {
	is_number(complexity)
	round(complexity) == complexity
}

# METADATA
# title: Required maturity for an action
# description: |
#   The required maturity of the action on this resource, when it is a known
#   maturity; undefined otherwise, and the decision then denies (fail closed).
required_for(action, resource) := m if {
	m := required(complexity(action, resource))
	known(m)
}
