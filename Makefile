# Convenience targets; the README's two scripts are the supported entry points.
.PHONY: setup demo test lint docs deb deb-test

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

# Debian packages in dist/deb/ (packaging/build-deb.sh; ~10 min the first time, ~2 later).
deb:
	packaging/build-deb.sh

# Build, then install/upgrade/purge in a debootstrapped bookworm root (needs root).
deb-test:
	packaging/test-in-chroot.sh
