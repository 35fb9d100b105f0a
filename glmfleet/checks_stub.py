import dataclasses
@dataclasses.dataclass(frozen=True)
class Check:
    name: str; status: str; reason: str; remedy: str
def verdict(cs): return "FAIL" if any(c.status=="FAIL" for c in cs) else "WARN" if any(c.status=="WARN" for c in cs) else "PASS"
def first_failure(cs): return next((c for c in cs if c.status=="FAIL"), None)
