/* virtio_irq: used-buffer notifications as real interrupts. Masks the 8259 PIC, enables
 * the local APIC, routes IOAPIC pin VIRTIO_FIRST_GSI (slot 0) to vector 0x30 (edge, active
 * high, to APIC 0), installs an IDT whose vector 0x30 handler reads InterruptStatus, ACKs
 * it, counts and sends EOI; then submits three reads to the virtio-blk device in slot 0,
 * each time sleeping in HLT until the handler ran, and prints the count.
 *
 * The handler does not IRET: kvm-pvm runs this 32-bit ring-0 code in KVM's instruction
 * emulator, which cannot emulate IRET outside real mode (KVM_EXIT_INTERNAL_ERROR). Since
 * interrupts are only enabled around the HLT of the wait loop, the handler drops the
 * interrupt frame and jumps back to that loop with interrupts off (the gate cleared IF). */
#include "virtio_defs.S"
#define HDR    0x300000
#define DATA   0x301000
#define STATUS 0x302000
#define VECTOR 0x30
#define IOAPIC 0xfec00000
#define LAPIC  0xfee00000
    .text
    .code32
    .globl _start
_start:
    mov $0x80000, %esp
    /* IDT: every vector -> unexpected, VECTOR -> irq_handler */
    xor %ecx, %ecx
1:  mov $unexpected, %eax
    cmp $VECTOR, %ecx
    jne 2f
    mov $irq_handler, %eax
2:  mov %cs, %dx
    shl $16, %edx
    mov %ax, %dx
    mov %edx, idt(,%ecx,8)
    and $0xffff0000, %eax
    or $0x8e00, %eax
    mov %eax, idt+4(,%ecx,8)
    inc %ecx
    cmp $64, %ecx
    jb 1b
    lidt idtr
    /* mask both PICs */
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    /* LAPIC: software enable, spurious vector 0xff, TPR 0 */
    movl $0x1ff, LAPIC + 0xf0
    movl $0, LAPIC + 0x80
    /* IOAPIC redirection entry for pin 5: low = vector, high = destination APIC 0 */
    movl $(0x10 + 2 * VIRTIO_FIRST_GSI), IOAPIC
    movl $VECTOR, IOAPIC + 0x10
    movl $(0x11 + 2 * VIRTIO_FIRST_GSI), IOAPIC
    movl $0, IOAPIC + 0x10
    PRINT "irq: routed gsi 5 to vector 0x30\n"

    mov $VIRTIO_BASE, %ebx
    mov $1, %ecx
    call vio_init
    PRINTHEX "irq: status=", %eax
    call putnl

    /* one read chain: header(0) -> data(1) -> status(2) */
    movl $0, HDR
    movl $0, HDR + 4
    movl $0, HDR + 8
    movl $0, HDR + 12
    DESC 0, 0, HDR, 16, D_NEXT, 1
    DESC 0, 1, DATA, 512, D_NEXT | D_WRITE, 2
    DESC 0, 2, STATUS, 1, D_WRITE, 0

    xor %edi, %edi                      /* requests done */
req:
    cmp $3, %edi
    jae finished
    cli
    movb $0xee, STATUS
    xor %ecx, %ecx
    xor %eax, %eax
    call vq_submit
    mov $2000000, %esi                  /* HLT wake-ups before giving up */
wait:
    cli
    mov irq_count, %eax
    cmp %edi, %eax
    ja got
    dec %esi
    jz timeout
    sti
    hlt
    jmp wait
got:
    sti
    xor %ecx, %ecx
    call vq_poll
    PRINTHEX "irq: request ", %edi
    PRINTHEX " used id=", %eax
    movzbl STATUS, %eax
    PRINTHEX " status=", %eax
    call putnl
    inc %edi
    jmp req
finished:
    PRINTHEX "irq: count=", irq_count
    PRINTHEX " isr=", irq_isr
    call putnl
    PRINT "irq: done\n"
    call boot_done
    jmp reset
timeout:
    PRINTHEX "irq: TIMEOUT count=", irq_count
    call putnl
    jmp reset

irq_handler:
    push %eax
    push %ebx
    mov vdev, %ebx
    mov R_INT_STATUS(%ebx), %eax
    mov %eax, R_INT_ACK(%ebx)
    or %eax, irq_isr
    incl irq_count
    movl $0, LAPIC + 0xb0               /* EOI */
    pop %ebx
    pop %eax
    add $12, %esp                       /* EIP, CS, EFLAGS of the interrupted HLT */
    jmp wait

unexpected:
    PRINT "irq: UNEXPECTED exception or interrupt\n"
    jmp reset

    .data
    .p2align 3
idt:  .fill 64, 8, 0
idtr: .word 64 * 8 - 1
      .long idt
irq_count: .long 0
irq_isr:   .long 0

#include "virtio.S"
#include "common.S"
