/* triple_fault: load an empty IDT and raise #UD: #UD -> #GP -> #DF -> triple fault,
 * which KVM reports as KVM_EXIT_SHUTDOWN. */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $msg, %esi
    call puts
    lidt null_idtr
    ud2
1:  hlt
    jmp 1b

    .section .rodata
msg:
    .asciz "about to triple fault\n"
null_idtr:
    .word 0
    .long 0

#include "common.S"
