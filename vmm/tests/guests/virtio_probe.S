/* virtio_probe: for each virtio-mmio slot 0..3 print MagicValue, Version, DeviceID; for a
 * present device negotiate VERSION_1 up to DRIVER_OK (every queue it offers, QSZ entries),
 * print the features, the statuses and the first config dwords, read an unmapped register
 * offset (must read 0), then reset it. */
#include "virtio_defs.S"
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    xor %ebp, %ebp                      /* slot */
slot:
    cmp $4, %ebp
    jae done
    mov %ebp, %ebx
    imul $VIRTIO_STEP, %ebx
    add $VIRTIO_BASE, %ebx
    PRINTHEX "probe: slot=", %ebp
    PRINTHEX " magic=", R_MAGIC(%ebx)
    cmpl $0x74726976, R_MAGIC(%ebx)
    je 1f
    call putnl
    jmp next
1:  PRINTHEX " version=", R_VERSION(%ebx)
    PRINTHEX " id=", R_DEVICE_ID(%ebx)
    call putnl
    movl $0, R_STATUS(%ebx)
    movl $S_ACK, R_STATUS(%ebx)
    movl $(S_ACK | S_DRIVER), R_STATUS(%ebx)
    movl $1, R_DEV_FEAT_SEL(%ebx)
    PRINTHEX "probe:   features=", R_DEV_FEAT(%ebx)
    movl $0, R_DEV_FEAT_SEL(%ebx)
    PRINTHEX ":", R_DEV_FEAT(%ebx)
    /* count the queues: QueueNumMax != 0 */
    xor %ecx, %ecx
2:  mov %ecx, R_QUEUE_SEL(%ebx)
    cmpl $0, R_QUEUE_MAX(%ebx)
    je 3f
    inc %ecx
    cmp $8, %ecx
    jb 2b
3:  PRINTHEX " queues=", %ecx
    PRINTHEX " qmax=", R_QUEUE_MAX(%ebx)     /* QueueSel = first missing queue: 0 */
    movl $0, R_QUEUE_SEL(%ebx)
    PRINTHEX "/", R_QUEUE_MAX(%ebx)
    call putnl
    call vio_init
    PRINTHEX "probe:   status=", %eax
    PRINTHEX " config=", R_CONFIG(%ebx)
    PRINTHEX ":", R_CONFIG+4(%ebx)
    PRINTHEX " unmapped=", 0xf0(%ebx)
    PRINTHEX " shmlen=", 0xb0(%ebx)
    /* a 1-byte read of the magic: control registers are 32-bit only -> 0 */
    movzbl R_MAGIC(%ebx), %eax
    PRINTHEX " byte=", %eax
    /* far end of the window */
    PRINTHEX " end=", 0xffc(%ebx)
    movl $0, R_STATUS(%ebx)
    PRINTHEX " reset=", R_STATUS(%ebx)
    call putnl
next:
    inc %ebp
    jmp slot
done:
    PRINT "probe: done\n"
    call boot_done
    jmp reset

#include "virtio.S"
#include "common.S"
