/* serial_hello: print one line on COM1, signal the boot timer, reset through the i8042. */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $msg, %esi
    call puts
    call boot_done
    jmp reset

    .section .rodata
msg:
    .asciz "hello from guest\n"

#include "common.S"
