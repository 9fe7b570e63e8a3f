/* idle: print one line, signal the boot timer, then halt forever with interrupts off (the
 * in-kernel LAPIC keeps the vCPU asleep in KVM_RUN). For RSS and kill/teardown benchmarks. */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $msg, %esi
    call puts
    call boot_done
1:  cli
    hlt
    jmp 1b

    .section .rodata
msg:
    .asciz "idle\n"

#include "common.S"
