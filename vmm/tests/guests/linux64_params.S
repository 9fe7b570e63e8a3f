/* linux64_params: a minimal "bzImage" for the Linux x86 64-bit boot protocol
 * (Documentation/arch/x86/boot.rst). The setup header says: protocol 2.15, loaded high,
 * XLF_KERNEL_64. The VMM loads the protected-mode part at 1 MiB and jumps to +0x200 in long
 * mode with %rsi = struct boot_params (the zero page). The guest prints what it finds:
 * type_of_loader, the command line, the e820 table, the initrd; then boot timer and reset. */

#define COM1 0x3f8

    .section .image, "awx"
/* ---- setup sectors (file offset 0): only the header matters, nothing here runs ---- */
setup_start:
    .org 0x1f1
    .byte 1                     /* setup_sects: 1 sector after the boot sector */
    .word 0                     /* root_flags */
    .long 0                     /* syssize */
    .word 0                     /* ram_size */
    .word 0                     /* vid_mode */
    .word 0                     /* root_dev */
    .word 0xaa55                /* boot_flag */
    .byte 0xeb, 0x00            /* jump */
    .ascii "HdrS"               /* header */
    .word 0x020f                /* version 2.15 */
    .long 0                     /* realmode_swtch */
    .word 0                     /* start_sys_seg */
    .word 0                     /* kernel_version */
    .byte 0                     /* type_of_loader (the VMM sets it) */
    .byte 1                     /* loadflags: LOADED_HIGH */
    .word 0                     /* setup_move_size */
    .long 0x100000              /* code32_start */
    .long 0                     /* ramdisk_image */
    .long 0                     /* ramdisk_size */
    .long 0                     /* bootsect_kludge */
    .word 0                     /* heap_end_ptr */
    .byte 0                     /* ext_loader_ver */
    .byte 0                     /* ext_loader_type */
    .long 0                     /* cmd_line_ptr */
    .long 0x7fffffff            /* initrd_addr_max */
    .long 0x200000              /* kernel_alignment */
    .byte 0                     /* relocatable_kernel */
    .byte 0                     /* min_alignment */
    .word 1                     /* xloadflags: XLF_KERNEL_64 */
    .long 2047                  /* cmdline_size */
    .org 0x400

/* ---- protected-mode kernel, loaded at 0x100000 ---- */
kernel_start:
    .code32
    ud2                         /* 32-bit entry (code32_start): not used by ax-vmm */
    .org kernel_start + 0x200
    .code64
    .globl startup_64
startup_64:
    mov %rsi, %r12              /* boot_params */
    lea msg_enter(%rip), %rsi
    call puts
    lea msg_loader(%rip), %rsi
    call puts
    movzbl 0x210(%r12), %eax    /* type_of_loader */
    call puthex
    call newline
    lea msg_cmdline(%rip), %rsi
    call puts
    mov 0x228(%r12), %esi       /* cmd_line_ptr */
    call puts
    call newline
    lea msg_ramdisk(%rip), %rsi
    call puts
    mov 0x218(%r12), %eax       /* ramdisk_image */
    call puthex
    lea msg_size(%rip), %rsi
    call puts
    mov 0x21c(%r12), %eax       /* ramdisk_size */
    call puthex
    call newline
    movzbl 0x1e8(%r12), %r13d   /* e820_entries */
    lea 0x2d0(%r12), %rbx       /* e820_table: 20-byte entries */
1:  test %r13d, %r13d
    jz 2f
    lea msg_e820(%rip), %rsi
    call puts
    mov (%rbx), %rax
    call puthex
    lea msg_size(%rip), %rsi
    call puts
    mov 8(%rbx), %rax
    call puthex
    lea msg_type(%rip), %rsi
    call puts
    mov 16(%rbx), %eax
    call puthex
    call newline
    add $20, %rbx
    dec %r13d
    jmp 1b
2:  mov $0x3f0, %dx             /* boot timer */
    mov $123, %al
    out %al, %dx
    mov $0x64, %dx              /* i8042 reset */
    mov $0xfe, %al
    out %al, %dx
3:  cli
    hlt
    jmp 3b

putc:                           /* %al */
    push %rdx
    mov $COM1, %dx
    out %al, %dx
    pop %rdx
    ret
puts:                           /* NUL-terminated string at %rsi */
    push %rax
4:  lodsb
    test %al, %al
    jz 5f
    call putc
    jmp 4b
5:  pop %rax
    ret
newline:
    push %rax
    mov $'\n', %al
    call putc
    pop %rax
    ret
puthex:                         /* %rax as "0x" + 16 hex digits */
    push %rax
    push %rcx
    push %rdx
    mov %rax, %rdx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov $16, %ecx
6:  rol $4, %rdx
    mov %edx, %eax
    and $0xf, %eax
    lea hexdigits(%rip), %rsi
    movb (%rsi,%rax), %al
    call putc
    dec %ecx
    jnz 6b
    pop %rdx
    pop %rcx
    pop %rax
    ret

hexdigits:   .ascii "0123456789abcdef"
msg_enter:   .asciz "linux64: long mode entry\n"
msg_loader:  .asciz "linux64: type_of_loader="
msg_cmdline: .asciz "linux64: cmdline="
msg_ramdisk: .asciz "linux64: ramdisk="
msg_size:    .asciz " size="
msg_type:    .asciz " type="
msg_e820:    .asciz "linux64: e820 addr="
    .p2align 9                  /* pad the image to whole sectors */
