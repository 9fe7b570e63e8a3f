/* virtio_blk: drive the virtio-blk device in slot 0 (virtio 1.2 §5.2) with one virtqueue:
 * read the capacity, read sector 0 and sector 1000 and print a hash of each, then a write
 * (refused on a read-only disk), a read past the end, GET_ID, FLUSH and an unknown type. */
#include "virtio_defs.S"
#define HDR    0x300000
#define DATA   0x301000
#define STATUS 0x302000
#define T_IN     0
#define T_OUT    1
#define T_FLUSH  4
#define T_GET_ID 8
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $VIRTIO_BASE, %ebx
    mov $1, %ecx
    call vio_init
    PRINTHEX "blk: status=", %eax
    PRINTHEX " capacity=", R_CONFIG(%ebx)
    call putnl

    mov $T_IN, %eax
    xor %edx, %edx
    mov $512, %ecx
    mov $D_WRITE, %esi
    call blk_req
    PRINT "blk: read sector=0"
    call print_result
    mov $DATA, %esi
    mov $512, %ecx
    call hash
    PRINTHEX " hash=", %eax
    call putnl

    mov $T_IN, %eax
    mov $1000, %edx
    mov $512, %ecx
    mov $D_WRITE, %esi
    call blk_req
    PRINT "blk: read sector=1000"
    call print_result
    mov $DATA, %esi
    mov $512, %ecx
    call hash
    PRINTHEX " hash=", %eax
    call putnl

    /* write sector 0 with 0x5a bytes */
    mov $DATA, %edi
    mov $512, %ecx
    mov $0x5a, %al
    rep stosb
    mov $T_OUT, %eax
    xor %edx, %edx
    mov $512, %ecx
    xor %esi, %esi
    call blk_req
    PRINT "blk: write sector=0"
    call print_result
    call putnl

    /* read past the end: sector = capacity */
    mov $T_IN, %eax
    mov R_CONFIG(%ebx), %edx
    mov $512, %ecx
    mov $D_WRITE, %esi
    call blk_req
    PRINT "blk: read past end"
    call print_result
    call putnl

    mov $DATA, %edi
    mov $32, %ecx
    call memzero
    mov $T_GET_ID, %eax
    xor %edx, %edx
    mov $20, %ecx
    mov $D_WRITE, %esi
    call blk_req
    PRINT "blk: get-id"
    call print_result
    PRINT " id="
    mov $DATA, %esi
    call puts
    call putnl

    mov $T_FLUSH, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    call blk_req
    PRINT "blk: flush"
    call print_result
    call putnl

    mov $0x99, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    call blk_req
    PRINT "blk: unknown type"
    call print_result
    call putnl

    /* read sector 0 again: unchanged by the refused write */
    mov $T_IN, %eax
    xor %edx, %edx
    mov $512, %ecx
    mov $D_WRITE, %esi
    call blk_req
    mov $DATA, %esi
    mov $512, %ecx
    call hash
    PRINTHEX "blk: reread sector=0 hash=", %eax
    call putnl

    PRINT "blk: done\n"
    call boot_done
    jmp reset

/* print_result: " status=SS used=LLLLLLLL" from blk_status / blk_used. */
print_result:
    PRINTHEX " status=", blk_status
    PRINTHEX " used=", blk_used
    ret

/* blk_req: %eax = type, %edx = sector (low 32 bits), %ecx = data length (0: no data
 * descriptor), %esi = data descriptor flags (D_WRITE for device-writable). Builds the chain
 * header(0) -> data(1) -> status(2) in queue 0, submits it, waits. Sets blk_status (the
 * status byte, preset to 0xee) and blk_used (used length). */
blk_req:
    push %eax
    push %ecx
    push %edx
    mov %eax, HDR
    movl $0, HDR + 4
    mov %edx, HDR + 8
    movl $0, HDR + 12
    movb $0xee, STATUS
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 2, STATUS, 1, D_WRITE, 0
    test %ecx, %ecx
    jz 1f
    movl $DATA, QMEM(0) + 16
    movl $0, QMEM(0) + 20
    mov %ecx, QMEM(0) + 24
    mov %esi, %eax
    or $D_NEXT, %eax
    mov %ax, QMEM(0) + 28
    movw $2, QMEM(0) + 30
    movw $1, QMEM(0) + 14
    jmp 2f
1:  movw $2, QMEM(0) + 14
2:  xor %ecx, %ecx
    xor %eax, %eax
    call vq_submit
    call vq_wait
    mov %edx, blk_used
    movzbl STATUS, %eax
    mov %eax, blk_status
    pop %edx
    pop %ecx
    pop %eax
    ret

    .data
blk_status: .long 0
blk_used:   .long 0

#include "virtio.S"
#include "common.S"
