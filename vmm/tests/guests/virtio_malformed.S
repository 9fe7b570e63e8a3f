/* virtio_malformed: a hostile driver against the virtio-blk device in slot 0. Bad register
 * accesses, a queue size that is not a power of two, descriptors outside guest memory, a
 * looping chain, an oversized length, a huge sector, a head index beyond the queue; then a
 * reset and a good read to show the device recovered. Prints one line per case. */
#include "virtio_defs.S"
#define HDR    0x300000
#define DATA   0x301000
#define STATUS 0x302000
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov $VIRTIO_BASE, %ebx
    mov %ebx, vdev

    /* 1. register abuse */
    movl $0, R_MAGIC(%ebx)                   /* read-only */
    movw $0xffff, R_STATUS(%ebx)             /* 16-bit write to a 32-bit register */
    movl $0x12345678, 0x0f0(%ebx)            /* unknown offset */
    movl $99, R_QUEUE_SEL(%ebx)
    PRINTHEX "mal: magic=", R_MAGIC(%ebx)
    PRINTHEX " status=", R_STATUS(%ebx)
    PRINTHEX " unknown=", 0x0f0(%ebx)
    PRINTHEX " qmax(sel 99)=", R_QUEUE_MAX(%ebx)
    movl $7, R_QUEUE_NOTIFY(%ebx)            /* no queue 7 */
    call putnl

    /* 2. queue size 6 */
    movl $0, R_STATUS(%ebx)
    movl $S_ACK, R_STATUS(%ebx)
    movl $(S_ACK | S_DRIVER), R_STATUS(%ebx)
    movl $1, R_DRV_FEAT_SEL(%ebx)
    movl $1, R_DRV_FEAT(%ebx)
    movl $(S_ACK | S_DRIVER | S_FEATURES_OK), R_STATUS(%ebx)
    movl $0, R_QUEUE_SEL(%ebx)
    movl $6, R_QUEUE_NUM(%ebx)
    movl $QMEM(0), R_DESC_LO(%ebx)
    movl $QAVAIL(0), R_AVAIL_LO(%ebx)
    movl $QUSED(0), R_USED_LO(%ebx)
    movl $1, R_QUEUE_READY(%ebx)
    movl $(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK), R_STATUS(%ebx)
    PRINTHEX "mal: queue size 6: status=", R_STATUS(%ebx)
    PRINTHEX " isr=", R_INT_STATUS(%ebx)
    movl $0, R_STATUS(%ebx)
    PRINTHEX " after reset=", R_STATUS(%ebx)
    call putnl

    /* 3. a proper setup */
    mov $1, %ecx
    call vio_init
    PRINTHEX "mal: reinit status=", %eax
    call putnl
    movl $0, HDR                             /* IN, sector 0 */
    movl $0, HDR + 4
    movl $0, HDR + 8
    movl $0, HDR + 12

    /* 4. data descriptor outside guest memory (RAM is 32 MiB) */
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 1, 0x70000000, 512, D_NEXT | D_WRITE, 2
    DESC 0, 2, STATUS, 1, D_WRITE, 0
    call go
    PRINT "mal: outside memory"
    call result

    /* 5a. looping chain: 0 -> 1 -> 0 -> ... */
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 1, DATA, 512, D_NEXT | D_WRITE, 0
    call go
    PRINT "mal: loop 0->1->0"
    call result
    /* 5b. self loop on the header */
    DESC 0, 0, HDR, 16, D_NEXT, 0
    call go
    PRINT "mal: self loop"
    call result

    /* 6. oversized length */
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 1, DATA, 0x7fffffff, D_NEXT | D_WRITE, 2
    DESC 0, 2, STATUS, 1, D_WRITE, 0
    call go
    PRINT "mal: oversized"
    call result

    /* 7. sector 2^64 - 1 */
    movl $0xffffffff, HDR + 8
    movl $0xffffffff, HDR + 12
    DESC 0, 1, DATA, 512, D_NEXT | D_WRITE, 2
    call go
    PRINT "mal: huge sector"
    call result
    movl $0, HDR + 8
    movl $0, HDR + 12

    /* 8. head index 200 in a queue of 8: the device cannot return it -> DEVICE_NEEDS_RESET */
    mov $200, %eax
    xor %ecx, %ecx
    call vq_submit
    mov $1000000, %ecx
1:  testl $0x40, R_STATUS(%ebx)
    jnz 2f
    pause
    loop 1b
2:  PRINTHEX "mal: bad head: status=", R_STATUS(%ebx)
    call putnl

    /* 9. reset, set up again, a good read */
    mov $1, %ecx
    call vio_init
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 1, DATA, 512, D_NEXT | D_WRITE, 2
    DESC 0, 2, STATUS, 1, D_WRITE, 0
    call go
    PRINT "mal: recovered"
    call result

    PRINT "mal: survived\n"
    call boot_done
    jmp reset

/* go: preset the status byte to 0xee, submit head 0 on queue 0 and wait. */
go:
    movb $0xee, STATUS
    xor %ecx, %ecx
    xor %eax, %eax
    call vq_submit
    call vq_wait
    mov %edx, used_len
    ret

/* result: " used=LLLLLLLL status=SS\n" */
result:
    PRINTHEX " used=", used_len
    movzbl STATUS, %eax
    PRINTHEX " status=", %eax
    call putnl
    ret

    .data
used_len: .long 0

#include "virtio.S"
#include "common.S"
