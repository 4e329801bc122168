"""Sharing flows peer to peer over IPFS: publish, import, follow, pin (docs/SHARING.md)."""

# maintenance jobs of this package (gffs.maintenance.jobs.add_job_modules); importing
# gffs.share costs nothing more than this tuple
JOB_MODULES = ("gffs.share.publish", "gffs.share.importer", "gffs.share.pin",
               "gffs.share.follow")
