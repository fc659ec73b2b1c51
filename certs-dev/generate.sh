#!/usr/bin/env bash
# Regenerates the DEVELOPMENT-ONLY certificates in this folder with openssl:
#   dev-root.pem                      a web-PKI root that https_web peers trust (ca_file)
#   mesh-a-endpoint.{pem,key}         https_web bundle endpoint cert for mesh-a (DNS mesh-a, localhost; IP 127.0.0.1)
#   mesh-b-endpoint.{pem,key}         the same for mesh-b
# Keys are ECDSA P-256 in PKCS#8, valid 10 years. The root's key is thrown away after signing.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/root.key" 2>/dev/null
openssl req -x509 -new -key "$tmp/root.key" -sha256 -days 3650 -subj "/O=meshtrust dev/CN=meshtrust dev root (DO NOT TRUST)" \
  -addext "basicConstraints=critical,CA:true,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" -out dev-root.pem

for mesh in mesh-a mesh-b; do
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$mesh-endpoint.key" 2>/dev/null
  chmod 600 "$mesh-endpoint.key"
  openssl req -new -key "$mesh-endpoint.key" -subj "/O=meshtrust dev/CN=$mesh" -out "$tmp/$mesh.csr"
  cat > "$tmp/$mesh.ext" <<EXT
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$mesh,DNS:localhost,IP:127.0.0.1
EXT
  openssl x509 -req -in "$tmp/$mesh.csr" -CA dev-root.pem -CAkey "$tmp/root.key" -CAcreateserial -days 3650 -sha256 \
    -extfile "$tmp/$mesh.ext" -out "$mesh-endpoint.pem" 2>/dev/null
done
rm -f dev-root.srl
echo "certs-dev: regenerated dev-root.pem, mesh-a-endpoint.{pem,key}, mesh-b-endpoint.{pem,key}"
