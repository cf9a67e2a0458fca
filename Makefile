# The commands of the README: `make demo`, `make test` and `make serve`. Each sets up .venv first when needed.
PY := .venv/bin/python
STAMP := .venv/.setup-stamp

.PHONY: setup test demo serve clean-outputs
setup: $(STAMP)

$(STAMP): requirements.txt setup.py scripts/setup_env.sh scripts/install_fairseq.sh scripts/patches/fairseq-0.10.2-py311.patch
	scripts/setup_env.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	scripts/demo.sh

# the web page on http://127.0.0.1:8765/ (PORT=... to change); Ctrl-C stops it
serve: $(STAMP)
	.venv/bin/instruct-render serve --port $(or $(PORT),8765)

clean-outputs:
	rm -rf data-bin/* checkpoints/*.pt outputs
