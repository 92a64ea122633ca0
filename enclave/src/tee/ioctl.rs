//! The only `unsafe` code of the enclave: the TDX guest ioctl that returns a TDREPORT.
//!
//! Intel's `tdx-attest-rs` is not published as a crate; this is the same call, from the Linux
//! UAPI (`include/uapi/linux/tdx-guest.h`): `TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct
//! tdx_report_req)` with `struct tdx_report_req { __u8 reportdata[64]; __u8 tdreport[1024]; }`.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::path::Path;

use super::TeeError;

/// Size of a TDREPORT.
pub const TDREPORT_LEN: usize = 1024;
const REPORTDATA_LEN: usize = 64;

#[repr(C)]
struct TdxReportReq {
    reportdata: [u8; REPORTDATA_LEN],
    tdreport: [u8; TDREPORT_LEN],
}

/// `_IOWR('T', 1, struct tdx_report_req)`: direction read|write (3) << 30, size << 16,
/// type 'T' << 8, number 1.
pub const TDX_CMD_GET_REPORT0: u64 =
    (3u64 << 30) | ((std::mem::size_of::<TdxReportReq>() as u64) << 16) | ((b'T' as u64) << 8) | 1;

/// Ask the TDX module (through the guest driver) for a TDREPORT over `report_data`.
pub fn tdx_get_report0(
    device: &Path,
    report_data: &[u8; 64],
) -> Result<[u8; TDREPORT_LEN], TeeError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| TeeError::io(device, e))?;
    let mut req = TdxReportReq {
        reportdata: *report_data,
        tdreport: [0; TDREPORT_LEN],
    };
    // SAFETY: `req` is a live, properly sized `#[repr(C)]` struct matching the kernel's
    // `struct tdx_report_req`; the kernel reads `reportdata` and writes `tdreport` within it,
    // and the fd stays open for the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TDX_CMD_GET_REPORT0 as libc::c_ulong,
            &mut req as *mut TdxReportReq,
        )
    };
    if rc < 0 {
        return Err(TeeError::io(device, std::io::Error::last_os_error()));
    }
    Ok(req.tdreport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_uapi() {
        // 0xc4405401 as in linux/tdx-guest.h on x86_64 (size 1088).
        assert_eq!(TDX_CMD_GET_REPORT0, 0xc440_5401);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let err =
            tdx_get_report0(Path::new("/nonexistent/tdx_guest"), &[0; 64]).expect_err("no device");
        assert!(err.to_string().contains("/nonexistent/tdx_guest"));
    }
}
