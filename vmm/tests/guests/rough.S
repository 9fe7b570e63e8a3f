/* rough: odd but legal guest behaviour the VMM must survive without panicking: 16/32-bit
 * accesses to byte-wide devices, reads and writes of unmapped ports and of unmapped MMIO in
 * the hole, writes into the middle of device windows. Prints what unmapped reads returned. */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $0x3f8, %dx
    inl %dx, %eax               /* 32-bit read of the UART */
    mov $0x3fb, %dx
    outw %ax, %dx               /* 16-bit write to LCR */
    mov $0x3fb, %dx
    xor %eax, %eax
    outb %al, %dx               /* LCR back to 8n1 with DLAB off */
    mov $0x60, %dx
    outl %eax, %dx              /* 32-bit write to the i8042 data port */
    mov $0x64, %dx
    mov $0x12aa, %ax
    outw %ax, %dx               /* 16-bit write of a non-reset command (0xaa: self test) */
    mov $0x1234, %dx
    inl %dx, %eax               /* unmapped port: floating bus */
    mov %eax, %ebx
    movl $0xdeadbeef, 0xd0000000    /* unmapped MMIO write */
    mov 0xd0000ff0, %ecx        /* unmapped MMIO read */
    movl $0, 0xfebff000         /* another hole address */
    mov $msg_port, %esi
    call puts
    mov %ebx, %eax
    call puthex32
    mov $msg_mmio, %esi
    call puts
    mov %ecx, %eax
    call puthex32
    mov $msg_end, %esi
    call puts
    jmp reset

    .section .rodata
msg_port: .asciz "rough: unmapped port=0x"
msg_mmio: .asciz " unmapped mmio=0x"
msg_end:  .asciz "\nrough: survived\n"

#include "common.S"
