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

.PHONY: all build static demo test test-stages unit fuzz scan torture unit-kvm e2e e2e-smp e2e-stock e2e-user test-nokvm ci-nokvm race bench clean

all: build

build:
	$(GO) build -o $(OUT)/hvprobe ./cmd/hvprobe

# Static binaries: the nested KVM machine has no libc. vmm-kvm.test holds
# vmm's tests that need a real KVM (the files tagged kvm, *_kvm_test.go).
static:
	CGO_ENABLED=0 $(GO) build -o $(OUT)/hvprobe-static ./cmd/hvprobe
	CGO_ENABLED=0 $(GO) test -c -o $(OUT)/e2e.test ./tests/e2e
	CGO_ENABLED=0 $(GO) test -c -tags kvm -o $(OUT)/vmm-kvm.test ./vmm

demo: images build static
	$(WITH_KVM) $(CURDIR)/$(OUT)/hvprobe-static run --timeout 15m $(DEMO_PROBES) \
		--cmdline-append '$(DEMO_WORKLOAD)'

# Each stage of `make test` runs through tests/stage.sh, which times it and
# counts its nested-KVM retries into $(HVPROBE_STAGES); the table prints at
# the end, pass or fail. .ci/run passes its own file (with its setup row).
HVPROBE_STAGES ?= $(CURDIR)/$(OUT)/stages.tsv
export HVPROBE_STAGES
STAGE := tests/stage.sh

test:
	@$(if $(filter environment,$(origin HVPROBE_STAGES)),,rm -f $(HVPROBE_STAGES))
	@$(MAKE) --no-print-directory test-stages; rc=$$?; $(STAGE) --table; exit $$rc

test-stages: unit fuzz images-all scan unit-kvm e2e e2e-smp e2e-stock e2e-user

.PHONY: images-all
images-all:
	$(STAGE) images $(MAKE) --no-print-directory images images-stock images-user static

# Tests that need no KVM: plain go test, everywhere.
unit:
	$(STAGE) unit sh -c '$(GO) vet ./... && $(GO) vet -tags kvm ./vmm && \
		$(GO) test $$($(GO) list ./... | grep -v /tests/)'

# A longer soak than make test's: 3 seeds of 500 random probes on the mini
# kernel (HVPROBE_TORTURE_SEEDS=N for more), then the stock boot with its
# random sample of 430.
torture: images images-stock static
	$(call E2E_RUN,torture) env HVPROBE_TORTURE_SEEDS=$${HVPROBE_TORTURE_SEEDS:-3} ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 60m -test.run '^TestRandomProbesLeaveWorkloadIntact$$'
	$(call E2E_RUN,torture-stock) env HVPROBE_NESTED_TIMEOUT=1200 ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 55m -test.run '^TestStockKernelBootProbe$$'

# Every fuzzer in the tree (readers of guest memory and of input files),
# a bounded number of runs each (tests/fuzz.sh says why not a duration):
# FUZZTIME=5000000x make fuzz for a longer soak.
FUZZTIME ?= 200000x
fuzz:
	$(STAGE) fuzz tests/fuzz.sh $(FUZZTIME)

# Every instruction boundary of both kernels' text, and every alternative
# replacement, judged as a probe site (tests/textscan); no KVM needed.
scan: images images-stock
	$(STAGE) scan $(GO) test -count=1 -v ./tests/textscan

# vmm's tests on a real KVM: /dev/kvm where it opens, else the nested KVM.
unit-kvm: static
	cd vmm && $(CURDIR)/$(STAGE) unit-kvm ../$(WITH_KVM) $(CURDIR)/$(OUT)/vmm-kvm.test -test.v -test.timeout 15m

# The mini guest's e2e tests: one shared 1-vCPU guest (e2e), then the
# 2-vCPU ones in an L1 of their own (e2e-smp), where a crash of the nested
# KVM's L1, which 2-vCPU guests provoke (docs/QUIRKS.md #43), costs a
# retry of minutes. The stock kernel (e2e-stock) and user space
# (e2e-user) have stages of their own too.
E2E_ALONE := TestStockKernelBootProbe|TestUserSpaceSyscalls|TestUserSpaceDisk
E2E_RUN = cd tests/e2e && HVPROBE_E2E_LOGDIR=$(CURDIR)/$(OUT)/logs/$(1) $(CURDIR)/$(STAGE) $(1)
e2e: images static
	$(call E2E_RUN,e2e) ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 40m -test.skip 'SMP|$(E2E_ALONE)'

e2e-smp: images static
	$(call E2E_RUN,e2e-smp) ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 20m -test.run 'SMP' -test.skip '$(E2E_ALONE)'

# Debian's stock kernel, one boot for every stock check. Where kernel mode
# is emulated (PVM) that boot takes 4-32 minutes (docs/QUIRKS.md #27).
e2e-stock: images-stock static
	$(call E2E_RUN,e2e-stock) env HVPROBE_NESTED_TIMEOUT=1200 ../../$(WITH_KVM) $(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 55m -test.run '^TestStockKernelBootProbe$$'

# User space in the guest (tests/e2e/userspace_test.go, and the stock
# kernel's disk through its own virtio modules, userdisk_test.go): always in the
# nested KVM, even where /dev/kvm works, because PVM's guest user space
# cannot make system calls (docs/QUIRKS.md #13). There the test cannot
# skip: HVPROBE_REQUIRE_KVM=1, and the KVM does not emulate. QEMU TCG's SVM
# never intercepts int3, so hvprobe's IDT doorbell takes it (#17, #24).
# Each vCPU count gets its own L1, again if that L1 kernel fails (#43).
e2e-user: images-stock images-user static
	@echo "e2e-user: in the nested KVM (images/nested/run.sh); int3 is reflected there and taken by hvprobe's IDT doorbell"
	$(call E2E_RUN,e2e-user) sh -c 'for n in 1 2; do \
		HVPROBE_REQUIRE_KVM=1 HVPROBE_INT3=reflected HVPROBE_HWBP=none \
		../../images/nested/retry.sh 3 --timeout 1500 --watch "$$HVPROBE_E2E_LOGDIR" -- \
			$(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 20m -test.run "^TestUserSpaceSyscalls$$/^$${n}cpu$$" || exit 1; \
	done; \
	HVPROBE_REQUIRE_KVM=1 HVPROBE_INT3=reflected HVPROBE_HWBP=none \
		../../images/nested/retry.sh 3 --timeout 1500 --watch "$$HVPROBE_E2E_LOGDIR" -- \
			$(CURDIR)/$(OUT)/e2e.test -test.v -test.timeout 20m -test.run "^TestUserSpaceDisk$$"'

# A machine without /dev/kvm, simulated on one with it: the same command in
# a mount namespace whose /dev has no kvm node (images/nested/nokvm.sh).
test-nokvm:
	images/nested/nokvm.sh $(MAKE) --no-print-directory test

ci-nokvm:
	images/nested/nokvm.sh env CI=true bash .ci/run

# The pause primitive and the VM's lifetime under the race detector
# (needs cgo, so a usable /dev/kvm: not through the nested KVM).
race:
	$(GO) test -race -count=3 -tags kvm -run 'TestPause|TestCloseWhileInUse|TestDoFromOwnThread' ./vmm

bench: images static
	$(WITH_KVM) $(CURDIR)/$(OUT)/hvprobe-static bench

clean:
	rm -rf $(OUT)
