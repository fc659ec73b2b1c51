"""Fetches from a SPIFFE Workload API with the unmodified py-spiffe client (grpcio, C-core).

Usage: fetch.py unix:///path/to/workload.sock
Prints one JSON object: the default SVID, the X.509 bundles per trust domain, the federated
bundles of the X.509 context, and a JWT-SVID for audience "interop", validated back through the
server. Exits non-zero (with the error) on any failure.
"""
import json
import sys

from spiffe import WorkloadApiClient


def trust_domains(bundles) -> list:
    """py-spiffe 0.3 returns a set of X509Bundle; older versions a dict keyed by trust domain."""
    items = bundles.values() if isinstance(bundles, dict) else bundles
    return sorted(str(b.trust_domain) for b in items)


def main() -> None:
    socket = sys.argv[1]
    with WorkloadApiClient(socket_path=socket, default_timeout=10.0) as client:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
        ctx = client.fetch_x509_context()
        jwt = client.fetch_jwt_svid(audience={"interop"})
        validated = client.validate_jwt_svid(jwt.token, "interop")
        out = {
            "spiffe_id": str(svid.spiffe_id),
            "chain_len": len(svid.cert_chain),
            "bundle_trust_domains": trust_domains(bundles.bundles),
            "context_svids": [str(s.spiffe_id) for s in ctx.x509_svids],
            "jwt_subject": str(jwt.spiffe_id),
            "validated_subject": str(validated.spiffe_id),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, don't hide
        print(f"python client error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
