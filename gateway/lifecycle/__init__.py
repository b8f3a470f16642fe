"""Agent lifecycle (DESIGN contract 6): state overlays on agents.yaml, error budgets, promotion
proposals, approvals, governance events, risk scores and reports."""
