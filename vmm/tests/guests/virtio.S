/* virtio-mmio driver routines for the test guests (virtio 1.2 §3.1.1 initialisation,
 * §2.7 split virtqueues). Included at the end of a guest, with common.S. */

    .text
    .code32

/* vio_init: %ebx = device base, %ecx = number of queues. Resets the device, negotiates
 * VIRTIO_F_VERSION_1 only, sets up queues 0..%ecx-1 with QSZ entries at QMEM(q), sets
 * DRIVER_OK. Returns the final status in %eax. Records the base in vdev. */
vio_init:
    push %ecx
    push %edx
    push %edi
    mov %ebx, vdev
    movl $0, R_STATUS(%ebx)
    movl $S_ACK, R_STATUS(%ebx)
    movl $(S_ACK | S_DRIVER), R_STATUS(%ebx)
    movl $1, R_DRV_FEAT_SEL(%ebx)
    movl $1, R_DRV_FEAT(%ebx)          /* VERSION_1 is bit 32 */
    movl $0, R_DRV_FEAT_SEL(%ebx)
    movl $0, R_DRV_FEAT(%ebx)
    movl $(S_ACK | S_DRIVER | S_FEATURES_OK), R_STATUS(%ebx)
    xor %edi, %edi
1:  cmp %ecx, %edi
    jae 2f
    mov %edi, R_QUEUE_SEL(%ebx)
    movl $QSZ, R_QUEUE_NUM(%ebx)
    mov %edi, %edx
    imul $0x3000, %edx
    add $0x200000, %edx
    movl $0, 0x1000(%edx)               /* avail flags + idx */
    movl $0, 0x2000(%edx)               /* used flags + idx */
    movw $0, last_used(,%edi,2)
    mov %edx, R_DESC_LO(%ebx)
    movl $0, R_DESC_HI(%ebx)
    add $0x1000, %edx
    mov %edx, R_AVAIL_LO(%ebx)
    movl $0, R_AVAIL_HI(%ebx)
    add $0x1000, %edx
    mov %edx, R_USED_LO(%ebx)
    movl $0, R_USED_HI(%ebx)
    movl $1, R_QUEUE_READY(%ebx)
    inc %edi
    jmp 1b
2:  movl $(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK), R_STATUS(%ebx)
    mov R_STATUS(%ebx), %eax
    pop %edi
    pop %edx
    pop %ecx
    ret

/* vq_submit: %ecx = queue, %eax = head descriptor index: publish in the available ring
 * and notify (QueueNotify = queue index). */
vq_submit:
    push %edx
    push %esi
    mov %ecx, %edx
    imul $0x3000, %edx
    add $0x201000, %edx
    movzwl 2(%edx), %esi
    push %esi
    and $(QSZ - 1), %esi
    mov %ax, 4(%edx,%esi,2)
    pop %esi
    inc %esi
    mov %si, 2(%edx)
    mov vdev, %edx
    mov %ecx, R_QUEUE_NOTIFY(%edx)
    pop %esi
    pop %edx
    ret

/* vq_poll: %ecx = queue. If the used ring has a new entry: %eax = id, %edx = len;
 * otherwise %eax = -1. */
vq_poll:
    push %esi
    push %edi
    mov %ecx, %esi
    imul $0x3000, %esi
    add $0x202000, %esi
    movzwl last_used(,%ecx,2), %edi
    movzwl 2(%esi), %eax
    cmp %ax, %di
    je 1f
    mov %edi, %eax
    and $(QSZ - 1), %eax
    lea 4(%esi,%eax,8), %esi
    mov 4(%esi), %edx
    mov (%esi), %eax
    inc %edi
    mov %di, last_used(,%ecx,2)
    pop %edi
    pop %esi
    ret
1:  mov $-1, %eax
    pop %edi
    pop %esi
    ret

/* vq_wait: %ecx = queue: like vq_poll but spins until an entry arrives; prints a timeout
 * and resets after ~4M polls. */
vq_wait:
    push %ebx
    mov $4000000, %ebx
1:  call vq_poll
    cmp $-1, %eax
    jne 2f
    pause
    dec %ebx
    jnz 1b
    PRINTHEX "vq_wait: TIMEOUT on queue ", %ecx
    PRINT "\n"
    jmp reset
2:  pop %ebx
    ret

/* memzero: zero %ecx bytes at %edi. */
memzero:
    push %eax
    push %ecx
    push %edi
    xor %eax, %eax
    rep stosb
    pop %edi
    pop %ecx
    pop %eax
    ret

/* hash: %esi = buffer, %ecx = length -> %eax = h where h = h * 31 + byte, from 0. */
hash:
    push %ecx
    push %edx
    push %esi
    xor %eax, %eax
1:  test %ecx, %ecx
    jz 2f
    imul $31, %eax
    movzbl (%esi), %edx
    add %edx, %eax
    inc %esi
    dec %ecx
    jmp 1b
2:  pop %esi
    pop %edx
    pop %ecx
    ret

/* putnl: newline. */
putnl:
    push %eax
    mov $'\n', %al
    call putc
    pop %eax
    ret

    .data
    .p2align 2
vdev:      .long 0
last_used: .word 0, 0, 0, 0
    .text
