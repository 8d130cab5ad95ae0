# hvprobe — see README.md. Two entry points:
#   make demo   set up (guest images) and boot the default guest with a demo probe set
#   make test   every test: unit, then end-to-end against a real booted guest
GO ?= go
OUT := out

include images/images.mk

# Commands that need KVM run through with-kvm: directly where /dev/kvm is
# usable, else inside a nested KVM (QEMU TCG + emulated SVM, images/nested).
WITH_KVM := images/nested/with-kvm.sh

DEMO_PROBES := --kprobe hvwl_target_add --kprobe hvwl_target_ret+0x1
DEMO_WORKLOAD := hvprobe_wl=calls:5,ret:3,poweroff

.PHONY: all build static demo test unit e2e bench fuzz clean

all: build

build:
	$(GO) build -o $(OUT)/hvprobe ./cmd/hvprobe

# Static binaries: the nested KVM machine has no libc.
static:
	CGO_ENABLED=0 $(GO) build -o $(OUT)/hvprobe-static ./cmd/hvprobe
	CGO_ENABLED=0 $(GO) test -c -o $(OUT)/e2e.test ./tests/e2e

demo: images static
	$(WITH_KVM) $(CURDIR)/$(OUT)/hvprobe-static run --timeout 15m $(DEMO_PROBES) \
		--cmdline-append '$(DEMO_WORKLOAD)'

unit:
	$(GO) vet ./...
	$(GO) test $$($(GO) list ./... | grep -v /tests/e2e)

# The stock-kernel test runs apart, each attempt in a fresh KVM machine
# with a hard time limit (tests/e2e/stock.sh, docs/QUIRKS.md #23).
e2e: images images-stock static
	cd tests/e2e && HVPROBE_E2E_LOGDIR=$(CURDIR)/$(OUT) ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 40m -test.skip TestStockKernelBootProbe
	tests/e2e/stock.sh $(CURDIR)/$(OUT)

test: unit e2e

bench: images static
	$(WITH_KVM) $(CURDIR)/$(OUT)/hvprobe-static bench

clean:
	rm -rf $(OUT)
