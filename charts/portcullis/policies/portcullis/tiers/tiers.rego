# METADATA
# title: Tier reach
# description: |
#   What an agent's tier lets it reach at all: models (glob patterns, each tier
#   adding to the ones below it), tool servers (by minimum tier) and the
#   obligations (output and rate limits) attached to every decision.
#   All values come from data.portcullis.config.
package portcullis.tiers

import rego.v1

cfg := data.portcullis.config

# METADATA
# title: Known tier
# description: True when the tier is a number listed in the config.
known(tier) if {
	is_number(tier)
	round(tier) == tier
	cfg.tiers[format_int(tier, 10)]
}

# METADATA
# title: Model patterns for a tier
# description: The union of the model patterns of this tier and every lower tier.
model_patterns(tier) := {p |
	known(tier)
	some key, t in cfg.tiers
	to_number(key) <= tier
	some p in t.models
}

# METADATA
# title: Model reachable
# description: True when some pattern of the tier matches the model name.
model_allowed(tier, name) if {
	is_string(name)
	some p in model_patterns(tier)

	# null: no delimiters, so `*` spans the dots, slashes and colons of names like
	# gpt-4.1-nano, openai/gpt-4o or llama3:8b. An empty list means ["."] in OPA
	# and regorus alike: `*` would stop at the first dot.
	glob.match(p, null, name)
}

# Functions here use guarded definitions rather than `else` chains: regorus'
# compiled VM mishandles an undefined `else` value, and the gateway runs it.
# (A blank line keeps this apart from the METADATA block below: OPA reads the
# whole comment block that starts with `# METADATA` as YAML.)

# METADATA
# title: Tool server settings
# description: The server's entry in the config merged over the defaults.
server(name) := object.union(cfg.tool_server_defaults, object.get(cfg.tool_servers, [name], {})) if is_string(name)

server(name) := cfg.tool_server_defaults if not is_string(name)

# METADATA
# title: Tool server minimum tier
# description: The lowest tier that may list or call the server's tools.
tool_min_tier(server_name) := server(server_name).min_tier

# METADATA
# title: Tool server reachable
# description: True when the tier is at least the server's minimum tier.
tool_allowed(tier, server_name) if {
	known(tier)
	tier >= tool_min_tier(server_name)
}

# METADATA
# title: Obligations for a tier
# description: Output and rate limits the gateway enforces; empty for an unknown tier.
obligations(tier) := cfg.tiers[format_int(tier, 10)].obligations if known(tier)

obligations(tier) := {} if not known(tier)
