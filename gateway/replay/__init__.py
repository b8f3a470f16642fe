"""`portcullis policy replay`: recorded traffic against a candidate policy set (issue 12).

- source.py: the audit store's recorded inputs, streamed and folded by input digest;
- compare.py: two decisions per input -> the kind of change, counts, breakdown, examples (pure);
- render.py: the report as a table, JSON or a pull-request-ready Markdown report;
- command.py: the CLI command (checks, engines, progress bar on stderr, exit status).
"""
