# Convenience targets; the README's two scripts are the supported entry points.
.PHONY: setup demo test lint docs

setup:
	scripts/setup.sh

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

docs: setup
	.venv/bin/python -m appliance.config.reference > docs/configuration.md
