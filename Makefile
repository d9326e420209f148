# Convenience targets; the README's two scripts are the supported entry points.
.PHONY: setup demo test lint docs

setup:
	scripts/setup.sh

demo:
	scripts/demo.sh

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check appliance tests bench scripts
	.venv/bin/ruff format --check appliance tests bench

docs: setup
	.venv/bin/python -m appliance.config.reference > docs/configuration.md
