# Guest images for hvprobe's tests; see images/README.md.
# Included from the top-level Makefile: paths are relative to the repository
# root, where make runs.

GO ?= go
IMAGES_SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Outputs. MINI_DIR holds bzImage, vmlinux, System.map, config, build-info.
MINI_DIR  := .cache/images/mini/current
STOCK_DIR := .cache/images/stock
INITRAMFS := .cache/images/mini/initramfs.cpio

.PHONY: images images-mini initramfs images-stock images-smoke

images: images-mini initramfs

# build.sh keys its outputs by a hash of everything that goes into the
# kernel and returns at once when they exist, so it always runs.
images-mini:
	images/mini/build.sh

initramfs: $(INITRAMFS)

$(INITRAMFS): $(filter-out %_test.go,$(wildcard images/initramfs/*.go images/cmd/mkinitramfs/*.go))
	@test -x /bin/busybox || { \
		$(IMAGES_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
		$(IMAGES_SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static; }
	$(GO) run ./images/cmd/mkinitramfs -o $@

# Pinned Debian cloud kernel: vmlinuz, config, System.map (~300 MB download
# on first use, then cached).
images-stock:
	images/stock/fetch.sh

# The workload under QEMU TCG: a KVM-free check of the images themselves.
images-smoke: images
	images/mini/qemu-smoke.sh

# The user-space workload and its initramfs for the stock kernel
# (images/user, images/README.md "User-space workload"): /init makes system
# calls, so it runs only where guest user space can (not PVM).
USER_DIR       := .cache/images/user
USER_INITRAMFS := $(USER_DIR)/initramfs.cpio

.PHONY: images-user
images-user: $(USER_INITRAMFS)

$(USER_INITRAMFS): images/user/hvuser.c images/user/hvdisk.c images/user/build.sh images/stock/fetch.sh
	images/user/build.sh $(USER_DIR)
