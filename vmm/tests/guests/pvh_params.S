/* pvh_params: read struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h)
 * from %ebx and print it over COM1: magic, version, each memory map entry, the command
 * line and the RSDP address; then follow RSDP -> XSDT -> each table (and FADT -> DSDT)
 * and verify every ACPI checksum (ACPI 6.5 §5.2.5.3, §5.2.6). */
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov %ebx, %edi                  /* %edi = start_info, kept throughout */

    mov $s_magic, %esi
    call puts
    mov 0(%edi), %eax
    call puthex32
    mov $s_version, %esi
    call puts
    mov 4(%edi), %eax
    call puthex32
    mov $s_nl, %esi
    call puts

    /* memory map: memmap_paddr at 40, memmap_entries at 48; entries are 24 bytes */
    mov 48(%edi), %ecx
    mov 40(%edi), %ebx
1:  test %ecx, %ecx
    jz 2f
    mov $s_memmap, %esi
    call puts
    mov %ebx, %esi
    call puthex64                   /* addr */
    mov $s_sp, %esi
    call puts
    lea 8(%ebx), %esi
    call puthex64                   /* size */
    mov $s_type, %esi
    call puts
    mov 16(%ebx), %eax
    call puthex32                   /* type */
    mov $s_nl, %esi
    call puts
    add $24, %ebx
    dec %ecx
    jmp 1b
2:
    /* command line at cmdline_paddr (24) */
    mov $s_cmdline, %esi
    call puts
    mov 24(%edi), %esi
    test %esi, %esi
    jz 3f
    call puts
3:  mov $s_nl, %esi
    call puts

    /* modules: nr_modules at 12 */
    mov $s_modules, %esi
    call puts
    mov 12(%edi), %eax
    call puthex32
    mov $s_nl, %esi
    call puts

    /* RSDP at rsdp_paddr (32) */
    mov $s_rsdp, %esi
    call puts
    lea 32(%edi), %esi
    call puthex64
    mov $s_nl, %esi
    call puts
    mov 32(%edi), %ebx
    test %ebx, %ebx
    jz done

    /* RSDP: signature "RSD PTR ", checksum over 20 bytes, extended checksum over length (20) */
    cmpl $0x20445352, 0(%ebx)       /* "RSD " */
    jne bad_rsdp
    cmpl $0x20525450, 4(%ebx)       /* "PTR " */
    jne bad_rsdp
    mov %ebx, %esi
    mov $20, %ecx
    call checksum
    test %al, %al
    jnz bad_rsdp
    mov %ebx, %esi
    mov 20(%ebx), %ecx
    call checksum
    test %al, %al
    jnz bad_rsdp
    mov $s_rsdp_ok, %esi
    call puts

    /* XSDT at RSDP+24 (u64; we only address the low 4 GiB) */
    mov 24(%ebx), %ebx
    call table                      /* prints "acpi: XSDT ..." */
    mov 4(%ebx), %ecx               /* length */
    sub $36, %ecx
    shr $3, %ecx                    /* entries */
    lea 36(%ebx), %edx
4:  test %ecx, %ecx
    jz done
    push %ebx
    mov (%edx), %ebx
    call table
    cmpl $0x50434146, 0(%ebx)       /* "FACP": follow X_DSDT (140) or DSDT (40) */
    jne 5f
    push %ebx
    mov 40(%ebx), %eax
    cmpl $148, 4(%ebx)
    jb 6f
    mov 140(%ebx), %eax
6:  mov %eax, %ebx
    call table
    pop %ebx
5:  pop %ebx
    add $8, %edx
    dec %ecx
    jmp 4b

bad_rsdp:
    mov $s_rsdp_bad, %esi
    call puts
done:
    call boot_done
    jmp reset

/* table: %ebx = ACPI table; print "acpi: SIG len=XXXXXXXX checksum ok|BAD". */
table:
    push %eax
    push %ecx
    push %esi
    mov $s_acpi, %esi
    call puts
    mov 0(%ebx), %al
    call putc
    mov 1(%ebx), %al
    call putc
    mov 2(%ebx), %al
    call putc
    mov 3(%ebx), %al
    call putc
    mov $s_len, %esi
    call puts
    mov 4(%ebx), %eax
    call puthex32
    mov %ebx, %esi
    mov 4(%ebx), %ecx
    call checksum
    mov $s_ck_ok, %esi
    test %al, %al
    jz 1f
    mov $s_ck_bad, %esi
1:  call puts
    pop %esi
    pop %ecx
    pop %eax
    ret

/* checksum: %al = sum of %ecx bytes at %esi (0 when the table is valid). Clobbers %esi, %ecx. */
checksum:
    push %edx
    xor %edx, %edx
    cmp $0x10000, %ecx              /* refuse absurd lengths */
    ja 2f
1:  test %ecx, %ecx
    jz 3f
    add (%esi), %dl
    inc %esi
    dec %ecx
    jmp 1b
2:  mov $1, %dl
3:  mov %dl, %al
    pop %edx
    ret

    .section .rodata
s_magic:    .asciz "pvh: magic=0x"
s_version:  .asciz " version="
s_nl:       .asciz "\n"
s_sp:       .asciz " size="
s_type:     .asciz " type="
s_memmap:   .asciz "pvh: memmap addr="
s_cmdline:  .asciz "pvh: cmdline="
s_modules:  .asciz "pvh: modules="
s_rsdp:     .asciz "pvh: rsdp="
s_rsdp_ok:  .asciz "acpi: RSDP checksum ok\n"
s_rsdp_bad: .asciz "acpi: RSDP BAD\n"
s_acpi:     .asciz "acpi: "
s_len:      .asciz " len=0x"
s_ck_ok:    .asciz " checksum ok\n"
s_ck_bad:   .asciz " checksum BAD\n"

#include "common.S"
