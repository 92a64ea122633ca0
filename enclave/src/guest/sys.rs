//! The system calls the guest's init needs that std does not offer: mount, finit_module, IPv4
//! interface configuration, power-off. With `tee::ioctl`, the only `unsafe` code of the enclave;
//! every call here checks its return value and turns errno into `io::Error`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

fn check(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2).
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let (s, t, f) = (cstring(source)?, cstring(target)?, cstring(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    check(rc.into())
}

/// finit_module(2) of an uncompressed module file, without parameters.
pub fn finit_module(file: &std::fs::File) -> io::Result<()> {
    let params = cstring("")?;
    // SAFETY: the fd is open for the duration of the call; params is a valid empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    check(rc)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is how the kernel ABI
    // passes an IPv4 address in ifreq.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(
    sock: &std::os::fd::OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> io::Result<()> {
    // SAFETY: req is a valid, initialised ifreq that lives across the call; the kernel reads or
    // writes at most sizeof(ifreq).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    check(rc.into())
}

fn inet_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Bring an interface up, with an IPv4 address and prefix when given.
pub fn configure_interface(name: &str, ipv4: Option<(Ipv4Addr, u8)>) -> io::Result<()> {
    let sock = inet_socket()?;
    if let Some((addr, prefix)) = ipv4 {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(addr);
        ioctl(&sock, libc::SIOCSIFADDR as libc::c_ulong, &mut req)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
        ioctl(&sock, libc::SIOCSIFNETMASK as libc::c_ulong, &mut req)?;
    }
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS as libc::c_ulong, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&sock, libc::SIOCSIFFLAGS as libc::c_ulong, &mut req)
}

/// Flush and power the VM off (PID 1 must not exit: that panics the kernel).
pub fn power_off() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure (not PID 1, or no CAP_SYS_BOOT).
    std::process::exit(1)
}
