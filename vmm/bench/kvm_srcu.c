/* Where KVM setup waits for SRCU grace periods (docs/benchmarks.md, "ax-vmm").
 *
 * Build: gcc -O2 -o /tmp/kvm_srcu vmm/bench/kvm_srcu.c
 * Run:   /tmp/kvm_srcu ORDER TEARDOWN LIFE_MS
 *   ORDER     irqchip-first: KVM_CREATE_IRQCHIP, then KVM_SET_USER_MEMORY_REGION (ax-vmm before
 *             this change, Firecracker); mem-first: the slot first (ax-vmm now); split: the slot,
 *             then KVM_CAP_SPLIT_IRQCHIP instead of an in-kernel PIC/IOAPIC (Cloud Hypervisor)
 *   TEARDOWN  close: just close the fds; delete: delete the slot (size 0) first (ax-vmm now)
 *   LIFE_MS   how long the "VM" lives between KVM_CREATE_VCPU and teardown
 * Prints the setup ioctls' times, the time to the point a vCPU could run, and teardown. No
 * guest runs; 128 MiB of memfd RAM, 1 vCPU. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void check(long r, const char *what)
{
    if (r < 0) {
        perror(what);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s irqchip-first|mem-first|split close|delete LIFE_MS\n", argv[0]);
        return 2;
    }
    const char *order = argv[1];
    int del = !strcmp(argv[2], "delete");
    int life = atoi(argv[3]);
    size_t size = 128 << 20;
    double t0 = now(), a, set_mem = 0, irqchip = 0;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    check(kvm, "/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    check(vm, "KVM_CREATE_VM");
    check(ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000), "KVM_SET_TSS_ADDR");
    int fd = memfd_create("guest-ram", MFD_CLOEXEC);
    check(fd, "memfd_create");
    check(ftruncate(fd, size), "ftruncate");
    void *m = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    struct kvm_userspace_memory_region r = {
        .slot = 0, .memory_size = size, .userspace_addr = (unsigned long)m};
    if (!strcmp(order, "irqchip-first")) {
        a = now();
        check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
        irqchip = now() - a;
    }
    a = now();
    check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), "KVM_SET_USER_MEMORY_REGION");
    set_mem = now() - a;
    a = now();
    if (!strcmp(order, "mem-first")) {
        check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
    } else if (!strcmp(order, "split")) {
        struct kvm_enable_cap cap = {.cap = KVM_CAP_SPLIT_IRQCHIP, .args = {24}};
        check(ioctl(vm, KVM_ENABLE_CAP, &cap), "KVM_CAP_SPLIT_IRQCHIP");
    }
    if (strcmp(order, "irqchip-first"))
        irqchip = now() - a;
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    check(vcpu, "KVM_CREATE_VCPU");
    double ready = now() - t0;

    usleep(life * 1000);
    a = now();
    if (del) {
        r.memory_size = 0;
        check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r), "delete slot");
    }
    close(vcpu);
    close(vm);
    printf("set_mem %.3f irqchip %.3f ready %.3f teardown %.3f ms\n", set_mem, irqchip, ready,
           now() - a);
    return 0;
}
