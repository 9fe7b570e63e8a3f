/* virtio_fs: drive the vhost-user virtio-fs device in slot 0 (virtio 1.2 §5.11): print its
 * ID, features and configuration (tag, num_request_queues), set up the hiprio queue (0) and
 * one request queue (1), send FUSE_INIT on the request queue and print the reply
 * (fuse_out_header, fuse_init_out; FUSE kernel ABI, include/uapi/linux/fuse.h), then check
 * that the backend's call raised InterruptStatus bit 0.
 *
 * Then, by the first word of the kernel command line:
 *   "again" (or anything else): reset the device, set it up again and send a second
 *           FUSE_INIT (proves reset stops the backend's rings and re-activation works);
 *   "wait": wait for DEVICE_NEEDS_RESET (the test kills the backend), reset, try again,
 *           and show the guest keeps running. */
#include "virtio_defs.S"
#define REQ    0x300000
#define REPLY  0x301000
#define TAG    0x302000
#define FUSE_INIT 26
#define REQ_LEN   56                    /* fuse_in_header (40) + fuse_init_in (16) */
#define REPLY_LEN 256
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    mov 24(%ebx), %eax                  /* hvm_start_info.cmdline_paddr */
    mov %eax, cmdline
    mov $VIRTIO_BASE, %ebx
    PRINTHEX "fs: id=", R_DEVICE_ID(%ebx)
    movl $1, R_DEV_FEAT_SEL(%ebx)
    PRINTHEX " features=", R_DEV_FEAT(%ebx)
    movl $0, R_DEV_FEAT_SEL(%ebx)
    PRINTHEX ":", R_DEV_FEAT(%ebx)
    movl $1, R_QUEUE_SEL(%ebx)
    PRINTHEX " qmax=", R_QUEUE_MAX(%ebx)
    /* struct virtio_fs_config: u8 tag[36]; le32 num_request_queues */
    mov $TAG, %edi
    xor %ecx, %ecx
1:  mov R_CONFIG(%ebx,%ecx,4), %eax
    mov %eax, (%edi,%ecx,4)
    inc %ecx
    cmp $9, %ecx
    jb 1b
    movb $0, TAG + 36
    PRINT " tag="
    mov $TAG, %esi
    call puts
    PRINTHEX " request_queues=", R_CONFIG+36(%ebx)
    call putnl

    movl $1, unique
    call fs_up
    call fuse_init
    call check_isr

    mov cmdline, %esi
    test %esi, %esi
    jz again
    cmpl $0x74696177, (%esi)            /* "wait" */
    je wait_for_death

again:
    movl $0, R_STATUS(%ebx)
    PRINTHEX "fs: reset status=", R_STATUS(%ebx)
    call putnl
    movl $2, unique
    call fs_up
    call fuse_init
    PRINT "fs: done\n"
    call boot_done
    jmp reset

wait_for_death:
    PRINT "fs: waiting for the backend to go\n"
    mov $20000000, %ecx
1:  testl $0x40, R_STATUS(%ebx)
    jnz 2f
    pause
    dec %ecx
    jnz 1b
    PRINT "fs: TIMEOUT waiting for DEVICE_NEEDS_RESET\n"
    jmp reset
2:  PRINTHEX "fs: backend gone: status=", R_STATUS(%ebx)
    mov R_INT_STATUS(%ebx), %eax
    and $2, %eax                        /* configuration change */
    PRINTHEX " isr.config=", %eax
    call putnl
    movl $0, R_STATUS(%ebx)
    PRINTHEX "fs: reset status=", R_STATUS(%ebx)
    call putnl
    mov $2, %ecx
    call vio_init
    PRINTHEX "fs: reinit status=", %eax
    call putnl
    movl $0, R_STATUS(%ebx)
    PRINT "fs: survived\n"
    call boot_done
    jmp reset

/* fs_up: negotiate and set up queues 0 (hiprio) and 1 (requests); print the status. */
fs_up:
    push %ecx
    mov $2, %ecx
    call vio_init
    PRINTHEX "fs: status=", %eax
    call putnl
    pop %ecx
    ret

/* fuse_init: FUSE_INIT (7.31) on the request queue with a device-writable reply buffer;
 * wait for the used entry and print the reply. */
fuse_init:
    push %eax
    push %ecx
    push %edx
    push %edi
    mov $REQ, %edi
    mov $REQ_LEN, %ecx
    call memzero
    mov $REPLY, %edi
    mov $REPLY_LEN, %ecx
    call memzero
    /* struct fuse_in_header */
    movl $REQ_LEN, REQ + 0              /* len */
    movl $FUSE_INIT, REQ + 4            /* opcode */
    mov unique, %eax
    mov %eax, REQ + 8                   /* unique (u64) */
    movl $0, REQ + 16                   /* nodeid (u64) */
    /* struct fuse_init_in */
    movl $7, REQ + 40                   /* major */
    movl $31, REQ + 44                  /* minor */
    movl $0x20000, REQ + 48             /* max_readahead */
    movl $0, REQ + 52                   /* flags */
    DESC 1, 0, REQ, REQ_LEN, D_NEXT, 1
    DESC 1, 1, REPLY, REPLY_LEN, D_WRITE, 0
    mov $1, %ecx
    xor %eax, %eax
    call vq_submit
    call vq_wait
    PRINTHEX "fs: used id=", %eax
    PRINTHEX " len=", %edx
    call putnl
    /* struct fuse_out_header: len, error, unique (u64) */
    PRINTHEX "fs: reply len=", REPLY + 0
    PRINTHEX " error=", REPLY + 4
    PRINTHEX " unique=", REPLY + 8
    call putnl
    /* struct fuse_init_out: major, minor, max_readahead, flags, u16 max_background,
     * u16 congestion_threshold, max_write */
    PRINTHEX "fs: init major=", REPLY + 16
    PRINTHEX " minor=", REPLY + 20
    PRINTHEX " max_write=", REPLY + 36
    call putnl
    pop %edi
    pop %edx
    pop %ecx
    pop %eax
    ret

/* check_isr: the backend's call reaches the frontend's device thread, which sets
 * InterruptStatus bit 0 (used buffer) and signals the irqfd: wait for the bit, ACK it. */
check_isr:
    push %eax
    push %ecx
    mov $2000000, %ecx
1:  mov R_INT_STATUS(%ebx), %eax
    test $1, %eax
    jnz 2f
    pause
    dec %ecx
    jnz 1b
2:  PRINTHEX "fs: isr=", %eax
    mov %eax, R_INT_ACK(%ebx)
    PRINTHEX " after ack=", R_INT_STATUS(%ebx)
    call putnl
    pop %ecx
    pop %eax
    ret

    .data
    .p2align 2
cmdline: .long 0
unique:  .long 0

#include "virtio.S"
#include "common.S"
