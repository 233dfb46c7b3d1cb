//! FHIR packages as the guide publisher builds them (a gzipped tar of `package/...` files),
//! built in memory. Used by `shipped` and `outbound_auth`, and by `benches/guide.rs` (which
//! includes this file).

/// A `package.tgz` holding each file at `package/{path}`.
pub fn package_tgz<P: AsRef<str>>(files: &[(P, Vec<u8>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(
            &mut h,
            format!("package/{}", path.as_ref()),
            content.as_slice(),
        )
        .expect("a tar entry");
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("a gzipped tar")
}
