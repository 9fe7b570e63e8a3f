/* Definitions for the virtio test guests (included first). virtio-mmio registers
 * (virtio 1.2 §4.2.2) and the guest's fixed memory layout for split virtqueues (§2.7):
 * queue q's descriptor table at QMEM(q), available ring at +0x1000, used ring at +0x2000,
 * QSZ entries each. */

#define VIRTIO_BASE      0xd0000000
#define VIRTIO_STEP      0x1000
#define VIRTIO_FIRST_GSI 5

#define R_MAGIC        0x000
#define R_VERSION      0x004
#define R_DEVICE_ID    0x008
#define R_DEV_FEAT     0x010
#define R_DEV_FEAT_SEL 0x014
#define R_DRV_FEAT     0x020
#define R_DRV_FEAT_SEL 0x024
#define R_QUEUE_SEL    0x030
#define R_QUEUE_MAX    0x034
#define R_QUEUE_NUM    0x038
#define R_QUEUE_READY  0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS   0x060
#define R_INT_ACK      0x064
#define R_STATUS       0x070
#define R_DESC_LO      0x080
#define R_DESC_HI      0x084
#define R_AVAIL_LO     0x090
#define R_AVAIL_HI     0x094
#define R_USED_LO      0x0a0
#define R_USED_HI      0x0a4
#define R_CONFIG       0x100

#define S_ACK        1
#define S_DRIVER     2
#define S_DRIVER_OK  4
#define S_FEATURES_OK 8

#define D_NEXT  1
#define D_WRITE 2

#define QSZ 8
#define QMEM(q)  (0x200000 + (q) * 0x3000)
#define QAVAIL(q) (QMEM(q) + 0x1000)
#define QUSED(q)  (QMEM(q) + 0x2000)

/* DESC q, i, addr, len, flags, next: fill descriptor i of queue q (immediates). */
.macro DESC q, i, addr, len, flags, next
    movl $(\addr), QMEM(\q) + 16 * (\i)
    movl $0, QMEM(\q) + 16 * (\i) + 4
    movl $(\len), QMEM(\q) + 16 * (\i) + 8
    movw $(\flags), QMEM(\q) + 16 * (\i) + 12
    movw $(\next), QMEM(\q) + 16 * (\i) + 14
.endm

/* PRINT "text": print a string literal. */
.macro PRINT text
    .section .rodata
9991: .asciz "\text"
    .text
    push %esi
    mov $9991b, %esi
    call puts
    pop %esi
.endm

/* PRINTHEX label, reg: print label then the 32-bit register in hex. */
.macro PRINTHEX text, reg
    PRINT "\text"
    push %eax
    mov \reg, %eax
    call puthex32
    pop %eax
.endm
