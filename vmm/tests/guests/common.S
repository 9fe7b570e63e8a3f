/* Shared pieces of the test guests (GNU as, AT&T syntax, 32-bit protected mode as the PVH
 * ABI enters: xen/include/public/arch-x86/hvm/start_info.h, docs/misc/pvh.pandoc).
 * Included by each guest after its own code. */

#define COM1            0x3f8
#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_MAGIC 123
#define I8042_CMD       0x64
#define I8042_RESET     0xfe

/* The PVH entry note: namesz 4 ("Xen\0"), descsz 4, type 18 = XEN_ELFNOTE_PHYS32_ENTRY. */
    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, 18
    .asciz "Xen"
    .p2align 2
    .long _start

    .text
    .code32

/* putc: write %al to COM1. */
putc:
    push %edx
    mov $COM1, %dx
    out %al, %dx
    pop %edx
    ret

/* puts: write the NUL-terminated string at %esi. */
puts:
    push %eax
    push %esi
1:  lodsb
    test %al, %al
    jz 2f
    call putc
    jmp 1b
2:  pop %esi
    pop %eax
    ret

/* puthex32: write %eax as 8 hex digits. */
puthex32:
    push %eax
    push %ecx
    push %edx
    mov %eax, %edx
    mov $8, %ecx
1:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    call putc
    loop 1b
    pop %edx
    pop %ecx
    pop %eax
    ret

/* puthex64: write "0x" and the u64 at (%esi) as 16 hex digits. */
puthex64:
    push %eax
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    mov 4(%esi), %eax
    call puthex32
    mov (%esi), %eax
    call puthex32
    pop %eax
    ret

/* boot_done: tell the VMM's boot timer we are up. */
boot_done:
    push %eax
    push %edx
    mov $BOOT_TIMER_PORT, %dx
    mov $BOOT_TIMER_MAGIC, %al
    out %al, %dx
    pop %edx
    pop %eax
    ret

/* reset: pulse the CPU reset line through the i8042; never returns. */
reset:
    mov $I8042_CMD, %dx
    mov $I8042_RESET, %al
    out %al, %dx
1:  cli
    hlt
    jmp 1b

    .section .rodata
hexdigits:
    .ascii "0123456789abcdef"
