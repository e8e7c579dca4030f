//! The pilot's reading of a coordinator reply: `coordinator::directive::for_lease`. Any
//! body gives a (possibly empty) list of directives for exactly this lease and epoch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::coordinator::directive::{Directive, for_lease};
use vmpilot::lease::record::LeaseId;

fuzz_target!(|data: &[u8]| {
    // The client hands for_lease a lossy UTF-8 decoding of the reply.
    let reply = String::from_utf8_lossy(data);
    let lease: LeaseId = "l1".parse().unwrap();
    for epoch in [1, 2] {
        for d in for_lease(&reply, &lease, epoch) {
            let (id, e) = match &d {
                Directive::Release { lease_id, epoch } => (lease_id, *epoch),
                Directive::Shorten {
                    lease_id, epoch, ..
                } => (lease_id, *epoch),
            };
            assert!(
                id == &lease && e == epoch,
                "directive for another lease/epoch kept: {d:?}"
            );
        }
    }
});
