fn main() {
    // protoc comes from Debian's protobuf-compiler (install/bootstrap.sh).
    tonic_prost_build::configure()
        .compile_protos(&["proto/moat.proto"], &["proto"])
        .expect("compile proto/moat.proto (is protoc installed? run install/bootstrap.sh)");
}
