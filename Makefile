.PHONY: setup demo test test-fast docs bench
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
test-fast:
	bash scripts/test_fast.sh
docs:
	bash scripts/docs.sh
bench:
	bash scripts/bench.sh
