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

.PHONY: all build static demo test unit e2e e2e-user bench fuzz clean

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
# with a hard time limit (tests/e2e/stock.sh, docs/QUIRKS.md #23); the
# user-space test runs in e2e-user.
e2e: images images-stock images-user static
	cd tests/e2e && HVPROBE_E2E_LOGDIR=$(CURDIR)/$(OUT) ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 40m -test.skip 'TestStockKernelBootProbe|TestUserSpaceSyscalls'
	tests/e2e/stock.sh $(CURDIR)/$(OUT)

# User space in the guest (tests/e2e/userspace_test.go): always in the
# nested KVM, even where /dev/kvm works, because PVM's guest user space
# cannot make system calls (docs/QUIRKS.md #13). There the test cannot
# skip: HVPROBE_REQUIRE_KVM=1, and the KVM does not emulate. QEMU TCG's SVM
# never intercepts int3, so hvprobe's IDT doorbell takes it (#17, #24).
# Each vCPU count gets its own L1, again if that L1 kernel crashes (#43).
e2e-user: images-stock images-user static
	@echo "e2e-user: in the nested KVM (images/nested/run.sh); int3 is reflected there and taken by hvprobe's IDT doorbell"
	cd tests/e2e && for n in 1 2; do \
		HVPROBE_E2E_LOGDIR=$(CURDIR)/$(OUT) HVPROBE_REQUIRE_KVM=1 HVPROBE_INT3=reflected \
		HVPROBE_HWBP=none ../../images/nested/retry.sh 3 --timeout 1500 -- $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 20m \
			-test.run "^TestUserSpaceSyscalls$$/^$${n}cpu$$" || exit 1; \
	done

test: unit e2e e2e-user

bench: images static
	$(WITH_KVM) $(CURDIR)/$(OUT)/hvprobe-static bench

clean:
	rm -rf $(OUT)
