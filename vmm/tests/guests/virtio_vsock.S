/* virtio_vsock: a tiny vsock stream peer (virtio 1.2 §5.10) on the device in slot 0.
 * (a) connects to the host, CID 2 port 5000 (ax-vmm connects it to <uds>_5000), sends
 *     "ping from guest\n", prints what the host answers, shuts down;
 * (b) prints "vsock: listening on 1024", waits for the host's REQUEST (a host client sent
 *     "CONNECT 1024\n" on the hybrid socket), answers RESPONSE, echoes the first data packet
 *     back, and closes when the host does.
 * Queues: 0 rx (RXN buffers of 4 KiB, header and data in one descriptor), 1 tx, 2 event. */
#include "virtio_defs.S"
#define RXN     4
#define RXBUF   0x300000
#define TXBUF   0x310000
#define RXCOPY  0x320000
#define OP_REQUEST  1
#define OP_RESPONSE 2
#define OP_RST      3
#define OP_SHUTDOWN 4
#define OP_RW       5
/* header fields (le, packed) */
#define H_SRC_PORT 16
#define H_DST_PORT 20
#define H_LEN      24
#define H_OP       30
#define H_FLAGS    32
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $VIRTIO_BASE, %ebx
    mov $3, %ecx
    call vio_init
    PRINTHEX "vsock: status=", %eax
    PRINTHEX " guest_cid=", R_CONFIG(%ebx)
    call putnl
    mov R_CONFIG(%ebx), %eax
    mov %eax, my_cid
    /* RX buffers: descriptor i -> RXBUF + i * 4 KiB, device-writable */
    xor %edi, %edi
1:  mov %edi, %eax
    shl $12, %eax
    add $RXBUF, %eax
    mov %edi, %edx
    shl $4, %edx
    mov %eax, QMEM(0)(%edx)
    movl $0, QMEM(0)+4(%edx)
    movl $4096, QMEM(0)+8(%edx)
    movw $D_WRITE, QMEM(0)+12(%edx)
    movw $0, QMEM(0)+14(%edx)
    mov %edi, %eax
    xor %ecx, %ecx
    call vq_submit
    inc %edi
    cmp $RXN, %edi
    jb 1b

    /* (a) guest -> host */
    movl $1234, lport
    movl $5000, pport
    mov $OP_REQUEST, %eax
    xor %ecx, %ecx
    call vs_send
    call vs_recv
    PRINTHEX "vsock: a: reply op=", %eax
    call putnl
    cmp $OP_RESPONSE, %eax
    jne fail
    mov $OP_RW, %eax
    mov $ping, %esi
    mov $16, %ecx
    call vs_send
2:  call vs_recv
    cmp $OP_RW, %eax
    jne 2b
    PRINT "vsock: a: host says: "
    call print_payload
    mov $3, %eax
    mov %eax, tx_flags
    mov $OP_SHUTDOWN, %eax
    xor %ecx, %ecx
    call vs_send
    movl $0, tx_flags
3:  call vs_recv
    cmp $OP_RST, %eax
    jne 3b
    PRINT "vsock: a: closed\n"

    /* (b) host -> guest */
    movl $0, fwd_cnt
    PRINT "vsock: listening on 1024\n"
4:  call vs_recv
    cmp $OP_REQUEST, %eax
    jne 4b
    cmpl $1024, RXCOPY + H_DST_PORT
    jne 4b
    movl $1024, lport
    mov RXCOPY + H_SRC_PORT, %eax
    mov %eax, pport
    mov $OP_RESPONSE, %eax
    xor %ecx, %ecx
    call vs_send
    PRINT "vsock: b: accepted\n"
5:  call vs_recv
    cmp $OP_RW, %eax
    jne 5b
    PRINT "vsock: b: echo: "
    call print_payload
    mov $OP_RW, %eax
    mov $RXCOPY + 44, %esi
    mov RXCOPY + H_LEN, %ecx
    call vs_send
6:  call vs_recv
    cmp $OP_SHUTDOWN, %eax
    je 7f
    cmp $OP_RST, %eax
    jne 6b
7:  mov $OP_RST, %eax
    xor %ecx, %ecx
    call vs_send
    PRINT "vsock: b: closed\n"
    PRINT "vsock: done\n"
    call boot_done
    jmp reset
fail:
    PRINT "vsock: FAILED\n"
    jmp reset

/* print_payload: the RXCOPY payload (at most 200 bytes), as text. */
print_payload:
    push %eax
    push %ecx
    push %esi
    mov RXCOPY + H_LEN, %ecx
    cmp $200, %ecx
    jbe 1f
    mov $200, %ecx
1:  mov $RXCOPY + 44, %esi
2:  test %ecx, %ecx
    jz 3f
    lodsb
    call putc
    dec %ecx
    jmp 2b
3:  pop %esi
    pop %ecx
    pop %eax
    ret

/* vs_send: %eax = op, %esi = payload, %ecx = payload length. One TX descriptor holding
 * header and payload; waits until the device used it. */
vs_send:
    push %eax
    push %ecx
    push %edx
    push %esi
    push %edi
    mov my_cid, %edx
    mov %edx, TXBUF + 0
    movl $0, TXBUF + 4
    movl $2, TXBUF + 8
    movl $0, TXBUF + 12
    mov lport, %edx
    mov %edx, TXBUF + H_SRC_PORT
    mov pport, %edx
    mov %edx, TXBUF + H_DST_PORT
    mov %ecx, TXBUF + H_LEN
    movw $1, TXBUF + 28                  /* type stream */
    mov %ax, TXBUF + H_OP
    mov tx_flags, %edx
    mov %edx, TXBUF + H_FLAGS
    movl $0x10000, TXBUF + 36            /* buf_alloc */
    mov fwd_cnt, %edx
    mov %edx, TXBUF + 40
    mov $TXBUF + 44, %edi
    push %ecx
    rep movsb
    pop %ecx
    add $44, %ecx
    movl $TXBUF, QMEM(1)
    movl $0, QMEM(1) + 4
    mov %ecx, QMEM(1) + 8
    movw $0, QMEM(1) + 12
    movw $0, QMEM(1) + 14
    mov $1, %ecx
    xor %eax, %eax
    call vq_submit
    call vq_wait
    pop %edi
    pop %esi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* vs_recv: waits for an RX packet, copies header + up to 256 payload bytes to RXCOPY,
 * gives the buffer back, counts received payload in fwd_cnt; returns the op in %eax. */
vs_recv:
    push %ecx
    push %edx
    push %esi
    push %edi
    xor %ecx, %ecx
    call vq_wait
    push %eax
    mov %eax, %esi
    shl $12, %esi
    add $RXBUF, %esi
    mov $RXCOPY, %edi
    mov $300, %ecx
    rep movsb
    pop %eax
    xor %ecx, %ecx
    call vq_submit
    mov RXCOPY + H_LEN, %eax
    add %eax, fwd_cnt
    movzwl RXCOPY + H_OP, %eax
    pop %edi
    pop %esi
    pop %edx
    pop %ecx
    ret

    .section .rodata
ping: .ascii "ping from guest\n"
    .data
my_cid:   .long 0
lport:    .long 0
pport:    .long 0
fwd_cnt:  .long 0
tx_flags: .long 0

#include "virtio.S"
#include "common.S"
