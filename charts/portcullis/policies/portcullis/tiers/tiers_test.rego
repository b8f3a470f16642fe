package portcullis.tiers_test

import rego.v1

import data.portcullis.tiers

test_known_tiers if {
	every t in [0, 1, 2, 3, 4] {
		tiers.known(t)
	}
}

test_unknown_tiers if {
	not tiers.known(5)
	not tiers.known(-1)
	not tiers.known(2.5)
	not tiers.known("2")
	not tiers.known(null)
}

test_tier0_models if {
	tiers.model_allowed(0, "gpt-4o-mini")
	tiers.model_allowed(0, "text-embedding-3-small")
	not tiers.model_allowed(0, "gpt-4o")
	not tiers.model_allowed(0, "gpt-4.1-mini")
	not tiers.model_allowed(0, "claude-3-5-haiku-latest")
}

test_tier1_adds_small_models if {
	tiers.model_allowed(1, "gpt-4o-mini")
	tiers.model_allowed(1, "gpt-4.1-mini")
	tiers.model_allowed(1, "claude-3-5-haiku-20241022")
	tiers.model_allowed(1, "claude-haiku-4-5")
	tiers.model_allowed(1, "text-embedding-3-large")
	not tiers.model_allowed(1, "gpt-4o")
	not tiers.model_allowed(1, "claude-sonnet-4-5")
}

test_tier2_adds_mid_models if {
	tiers.model_allowed(2, "gpt-4o")
	tiers.model_allowed(2, "gpt-4.1")
	tiers.model_allowed(2, "claude-sonnet-4-5")
	tiers.model_allowed(2, "claude-3-7-sonnet-latest")
	tiers.model_allowed(2, "claude-haiku-4-5")
	not tiers.model_allowed(2, "o3-mini")
	not tiers.model_allowed(2, "claude-opus-4-1")
	not tiers.model_allowed(2, "gpt-4o-2024-08-06")
}

test_tier3_adds_reasoning_models if {
	tiers.model_allowed(3, "o1")
	tiers.model_allowed(3, "o3-mini")
	tiers.model_allowed(3, "o4-mini")
	tiers.model_allowed(3, "claude-opus-4-1")
	tiers.model_allowed(3, "gpt-4o-mini")
	not tiers.model_allowed(3, "gpt-5")
}

test_tier4_any_model if {
	tiers.model_allowed(4, "gpt-5")
	tiers.model_allowed(4, "some/vendor-model:latest")
}

test_unknown_tier_no_models if {
	not tiers.model_allowed(5, "gpt-4o-mini")
	count(tiers.model_patterns(9)) == 0
}

test_non_string_model_refused if {
	not tiers.model_allowed(4, 42)
}

test_tools_need_tier1 if {
	not tiers.tool_allowed(0, "orders")
	tiers.tool_allowed(1, "orders")
	tiers.tool_allowed(4, "orders")
	not tiers.tool_allowed(0, "unlisted")
	tiers.tool_allowed(1, "unlisted")
	not tiers.tool_allowed(0, null)
	tiers.tool_allowed(1, null)
}

test_server_min_tier_from_data if {
	not tiers.tool_allowed(2, "payments") with data.portcullis.config.tool_servers as {"payments": {"min_tier": 3}}
	tiers.tool_allowed(3, "payments") with data.portcullis.config.tool_servers as {"payments": {"min_tier": 3}}
}

test_server_inherits_defaults if {
	s := tiers.server("payments") with data.portcullis.config.tool_servers as {"payments": {"min_tier": 3}}
	s.min_tier == 3
	s.trust_annotations == true
}

test_obligations_per_tier if {
	tiers.obligations(0) == {"max_output_tokens": 1024, "requests_per_minute": 20, "tokens_per_minute": 20000}
	tiers.obligations(1) == {"max_output_tokens": 2048, "requests_per_minute": 60, "tokens_per_minute": 40000}
	tiers.obligations(2) == {"max_output_tokens": 4096, "requests_per_minute": 120, "tokens_per_minute": 100000}
	tiers.obligations(3) == {"max_output_tokens": 8192, "requests_per_minute": 300, "tokens_per_minute": 200000}
	tiers.obligations(4) == {"max_output_tokens": 16384, "requests_per_minute": 600, "tokens_per_minute": 1000000}
}

test_obligations_unknown_tier_empty if {
	tiers.obligations(7) == {}
	tiers.obligations("x") == {}
}

# Model names with dots, slashes and colons at every tier: globs have no
# delimiters, so `*` spans them (an empty delimiter list would mean ["."]).
test_tier0_separator_names if {
	every name in ["gpt-4.1-nano", "gpt-4o-mini.x", "openai/gpt-4o-mini", "gpt-4o-mini:latest"] {
		not tiers.model_allowed(0, name)
	}
}

test_tier1_separator_names if {
	every name in ["claude-haiku-4.5", "claude-3-5-haiku-2024.10.22", "claude-haiku-4.5:beta", "claude-haiku-x/y", "gpt-4.1-mini"] {
		tiers.model_allowed(1, name)
	}
	every name in ["gpt-4.1-nano", "gpt-4.1-mini:ft", "openai/gpt-4.1-mini", "claude-sonnet-4.5"] {
		not tiers.model_allowed(1, name)
	}
}

test_tier2_separator_names if {
	every name in ["claude-sonnet-4.5", "claude-sonnet-4.5:thinking", "claude-3-7-sonnet-2025.02.19", "claude-sonnet-4/eu", "gpt-4.1"] {
		tiers.model_allowed(2, name)
	}
	every name in ["gemini-1.5-pro", "openai/gpt-4o", "gpt-4o:ft", "claude-opus-4.1"] {
		not tiers.model_allowed(2, name)
	}
}

test_tier3_separator_names if {
	every name in ["o3-mini.2025", "o1:preview", "o4-mini/high", "claude-opus-4.1"] {
		tiers.model_allowed(3, name)
	}
	every name in ["gpt-4.1-nano", "gemini-1.5-pro", "openai/o3-mini", "llama3:8b"] {
		not tiers.model_allowed(3, name)
	}
}

test_tier4_separator_names if {
	every name in ["gpt-4.1-nano", "gemini-1.5-pro", "claude-sonnet-4.5", "openai/gpt-4o", "llama3:8b", "meta-llama/Llama-3.1-8B:free"] {
		tiers.model_allowed(4, name)
	}
}
