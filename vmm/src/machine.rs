//! A whole microVM: memory, KVM VM, devices, vCPU threads, and the stop protocol.
//!
//! Build order matters for spawn latency: KVM_SET_USER_MEMORY_REGION took 4–12 ms on kvm-pvm
//! when issued after KVM_CREATE_IRQCHIP, so RAM is registered once, as one slot per region,
//! before the irqchip exists ([`Vm::new`]).
//!
//! Stopping: whoever stops the VM (a vCPU exit, the i8042, the ACPI sleep register) records
//! a [`GuestExit`] on the [`ExitHandle`]. The main thread then sets the stop flag and kicks
//! every vCPU thread still inside KVM_RUN with a real-time signal until it returns (EINTR).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;

use crate::acpi::{self, AcpiConfig, AcpiShutdown, PowerEvent};
use crate::boot::{self, BootSpec, EntryPoint};
use crate::bus::{Bus, BusDevice, BusError};
use crate::config::{SerialOutput, VmConfig};
use crate::cpuid::CpuTemplate;
use crate::devices::boot_timer::{BootTimer, BOOT_TIMER_PORT};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::serial::{SerialDevice, COM1_GSI, COM1_PORT, SERIAL_PORT_LEN};
use crate::devices::virtio;
use crate::devices::IrqTrigger;
use crate::exit::{ExitHandle, GuestExit};
use crate::memory::{GuestRam, MemoryError, MIB};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{host_is_kvm_pvm, Vm, VmError};

/// Errors building or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device setup.
    #[error("device setup: {0}")]
    Bus(#[from] BusError),
    /// I/O (serial output file, threads, eventfds).
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A built, not yet running microVM.
pub struct Machine {
    // Field order is drop order: vCPUs and the VM go before the RAM they map.
    vcpus: Vec<Vcpu>,
    vm: Vm,
    ram: GuestRam,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitHandle,
    boot_timer: Arc<Mutex<BootTimer>>,
    entry: EntryPoint,
    /// Number of vCPUs built (run() joins them back into `vcpus`).
    vcpu_count: usize,
}

/// Adapts the ACPI sleep/reset register block to the bus and the exit handle.
struct AcpiPm {
    regs: AcpiShutdown,
    exit: ExitHandle,
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.regs.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.regs.write(offset, data) {
            self.exit.request(match self.regs.requested() {
                Some(PowerEvent::Reset) => GuestExit::Reset,
                _ => GuestExit::PowerOff,
            });
        }
    }
}

fn serial_writer(out: &SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match out {
        SerialOutput::Stdout => {
            // A dup of fd 1 as a File: unbuffered, one write(2) per guest byte, so output is
            // visible (and timeable) the moment the guest writes it.
            // SAFETY: dup returns a new fd we own, or -1 (checked).
            let fd = unsafe { libc::dup(std::io::stdout().as_raw_fd()) };
            if fd < 0 {
                return Err(Error::Io(
                    "dup stdout for the serial console".into(),
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            Box::new(unsafe { File::from_raw_fd(fd) })
        }
        SerialOutput::None => Box::new(std::io::sink()),
        SerialOutput::File(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::Io(format!("open serial output {}", p.display()), e))?,
        ),
    })
}

impl Machine {
    /// Builds the VM described by `cfg`. `start` is when the VMM process started (the boot
    /// timer measures from it).
    pub fn new(cfg: &VmConfig, start: Instant) -> Result<Self, Error> {
        let exit = ExitHandle::new().map_err(|e| Error::Io("eventfd".into(), e))?;
        let size = cfg.memory_mib * MIB;
        let ram = GuestRam::new(size)?;
        // Registers the RAM before creating the irqchip (see Vm::new for why that order).
        let vm = Vm::new(cfg.wants_pit(), &ram)?;

        // virtio-mmio devices: slot i at VIRTIO_MMIO_START + i * 4 KiB, GSI 5 + i
        // (docs/virtio.md); described by the DSDT, or on the command line without ACPI.
        let virtio = virtio::create_devices(cfg, &vm, &ram.mem)
            .map_err(|e| Error::Io("virtio device setup".into(), e))?;
        let cmdline = if cfg.acpi {
            cfg.cmdline.clone()
        } else {
            virtio::cmdline_with_devices(&cfg.cmdline, &virtio)
        };

        let rsdp = if cfg.acpi {
            let acpi_cfg = AcpiConfig {
                num_cpus: cfg.cpus,
                serial: Some((COM1_PORT, COM1_GSI)),
                mmio_devices: virtio.iter().map(|d| d.desc).collect(),
            };
            Some(acpi::create_acpi_tables(&ram.mem, &acpi_cfg)?)
        } else {
            None
        };
        let entry = boot::load(
            &ram.mem,
            size,
            &BootSpec {
                kernel: &cfg.kernel,
                initrd: cfg.initrd.as_deref(),
                cmdline: &cmdline,
                rsdp,
            },
        )?;

        // Legacy devices on the PIO bus.
        let mut pio = Bus::new();
        let irq = IrqTrigger(vm.irqfd(COM1_GSI)?);
        let serial = SerialDevice::new(irq, serial_writer(&cfg.serial)?);
        pio.insert(
            Arc::new(Mutex::new(serial)),
            u64::from(COM1_PORT),
            SERIAL_PORT_LEN,
        )?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            u64::from(I8042_PORT),
            I8042_PORT_LEN,
        )?;
        let boot_timer = Arc::new(Mutex::new(BootTimer::new(start)));
        pio.insert(boot_timer.clone(), u64::from(BOOT_TIMER_PORT), 1)?;
        if cfg.acpi {
            let pm = AcpiPm {
                regs: AcpiShutdown::new(),
                exit: exit.clone(),
            };
            pio.insert(
                Arc::new(Mutex::new(pm)),
                u64::from(acpi::ACPI_PM_PORT_BASE),
                u64::from(acpi::ACPI_PM_PORT_LEN),
            )?;
        }
        let mut mmio = Bus::new();
        for d in &virtio {
            mmio.insert(d.transport.clone(), d.desc.base, d.desc.size)?;
        }

        let template = cfg.cpu_template.resolve(host_is_kvm_pvm());
        let supported = vm
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::with_capacity(cfg.cpus.into());
        for i in 0..cfg.cpus {
            let v = Vcpu::new(&vm, i)?;
            v.configure(
                &supported,
                template,
                cfg.cpus,
                (i == 0).then_some(entry),
                &ram.mem,
            )?;
            vcpus.push(v);
        }
        log::debug!(
            "machine ready: {} vCPU(s), {} MiB, cpu template {:?}, entry {:?}, rsdp {:?}",
            cfg.cpus,
            cfg.memory_mib,
            template,
            entry,
            rsdp.map(|a: GuestAddress| a.0)
        );
        Ok(Machine {
            vcpus,
            vm,
            ram,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit,
            boot_timer,
            entry,
            vcpu_count: usize::from(cfg.cpus),
        })
    }

    /// How vCPU 0 enters the guest.
    pub fn entry(&self) -> EntryPoint {
        self.entry
    }

    /// The guest RAM (memfd and mappings).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The KVM VM (for irqfds of devices added later).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Time from VMM start to the guest's boot-timer write, if it wrote one.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_timer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .boot_time()
    }

    /// Runs the guest until it stops; returns why. Every vCPU runs on its own thread; this
    /// thread waits for the exit handle, then stops and joins the vCPUs.
    pub fn run(&mut self) -> Result<GuestExit, Error> {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for mut vcpu in self.vcpus.drain(..) {
            let (pio, mmio, exit, stop) = (
                self.pio.clone(),
                self.mmio.clone(),
                self.exit.clone(),
                stop.clone(),
            );
            let builder = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.index))
                .stack_size(256 << 10);
            // The vCPU thread installs its seccomp filter first (no-op with the jail off).
            let t = crate::jail::spawn(builder, crate::jail::ThreadKind::Vcpu, move || {
                if let Some(reason) = vcpu.run(&pio, &mmio, &exit, &stop) {
                    exit.request(reason);
                }
                vcpu
            })
            .map_err(|e| Error::Io("spawn vCPU thread".into(), e))?;
            threads.push(t);
        }
        crate::jail::enter_thread(crate::jail::ThreadKind::Main)
            .map_err(|e| Error::Io("jail the main thread".into(), std::io::Error::other(e)))?;
        let reason = self.exit.wait();
        stop.store(true, Ordering::Release);
        for t in threads {
            // Kick until the thread leaves KVM_RUN; a kick that lands just before KVM_RUN is
            // entered is lost, hence the retries.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                // SAFETY: the pthread is alive (not finished, not joined).
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
                std::thread::sleep(Duration::from_micros(200));
            }
            if t.is_finished() {
                if let Ok(v) = t.join() {
                    self.vcpus.push(v);
                }
            } else {
                log::warn!("a vCPU thread did not stop within 2 s; leaving it");
            }
        }
        // No vCPU runs any more (all joined): drop the memory slots now, which makes the VM
        // fd's close at exit quick (see Vm::delete_memory). Best effort: teardown continues.
        if self.vcpus.len() == self.vcpu_count {
            let t = Instant::now();
            match self.vm.delete_memory(&self.ram) {
                Ok(()) => log::debug!("memory slots deleted in {:?}", t.elapsed()),
                Err(e) => log::debug!("teardown: {e}"),
            }
        }
        Ok(reason)
    }
}

fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int) {}

/// Installs a no-op handler for the kick signal (without SA_RESTART) so a kick interrupts
/// KVM_RUN with EINTR instead of killing the process.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and empty mask is well formed.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Resolves the template the machine would use on this host (for logs and `--print-config`).
pub fn effective_template(t: CpuTemplate) -> CpuTemplate {
    t.resolve(host_is_kvm_pvm())
}
