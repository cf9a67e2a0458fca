# The two commands of the README: `make demo` and `make test`. Both set up .venv first when needed.
PY := .venv/bin/python
STAMP := .venv/.setup-stamp

.PHONY: setup test demo clean-outputs
setup: $(STAMP)

$(STAMP): requirements.txt setup.py scripts/setup_env.sh scripts/install_fairseq.sh scripts/patches/fairseq-0.10.2-py311.patch
	scripts/setup_env.sh
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	scripts/demo.sh

clean-outputs:
	rm -rf data-bin/* checkpoints/*.pt outputs
