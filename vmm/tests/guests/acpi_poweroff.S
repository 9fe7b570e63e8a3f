/* acpi_poweroff: power off the way Linux does on a hardware-reduced ACPI platform: write
 * SLP_TYP(S5 = 5) << 2 | SLP_EN (bit 5) = 0x34 to the FADT sleep control register (I/O port
 * 0x600, see docs/acpi.md; ACPI 6.5 §4.8.3.7). ax-vmm must exit cleanly (status 0). */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $msg, %esi
    call puts
    mov $0x600, %dx
    mov $0x34, %al
    out %al, %dx
1:  cli
    hlt
    jmp 1b

    .section .rodata
msg:
    .asciz "powering off\n"

#include "common.S"
