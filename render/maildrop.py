"""The maildrop role (case study, "3. Dovecot: maildrop"): Postfix receives from smtp-in and hands
mail to Dovecot over LMTP; Dovecot serves IMAPS and ManageSieve, runs Sieve and IMAPSieve, and
replicates every mailbox to the peer maildrop with dsync.

    render(stack, host, keys) -> HostTree
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import PurePosixPath

from model import Host, Stack
from render import dovecot, postfix, probes, tls
from render.keys import KeyMaterial
from render.names import tls_cert_path, tls_key_path
from render.templates import render as render_template
from render.tree import Check, FileSpec, HostTree, Probe

ROLE = "maildrop"
DOVECOT_CONF = "/etc/dovecot/dovecot.conf"
USERS_FILE = "/etc/dovecot/maildrop-users"
SIEVE_DIR = "/etc/dovecot/sieve"
VIRTUAL_MAILDROP = "/etc/postfix/virtual-maildrop"
# Every mailbox belongs to this one unix user (case study: "vmail:vmail for every mailbox").
# A fixed id keeps file ownership the same on both replicas and across rebuilds and restores.
VMAIL_ID = 5000
USERS_HOME = "/var/dovecot/users"
SYSUSERS = "/etc/sysusers.d/vmail.conf"
TMPFILES = "/etc/tmpfiles.d/dovecot-users.conf"
# Syncs every user with the peer when Dovecot starts (see the template).
UNIT_DROP_IN = "/etc/systemd/system/dovecot.service.d/mail-cluster.conf"
# Dovecot 2.3's default replication_dsync_parameters without -U (which reports back to the replicator).
DSYNC_ON_START = "-d -N -l 30"
# The learn scripts read the rspamd controller password from here (not their own world-readable text).
RSPAMD_PASSWORD_FILE = "/etc/dovecot/rspamd-controller.password"
LEARN_SPAM = "rspamd-learn-spam.sh"
LEARN_HAM = "rspamd-learn-ham.sh"
# Per rspamc try, in seconds; the tries run side by side under sieve_pipe_exec_timeout (10 s).
LEARN_TIMEOUT = 8
# The header smtp-in's rspamd adds for its "add header" action (rspamd's milter default).
SPAM_HEADER = "X-Spam"
# Folders every mailbox has, with their RFC 6154 special-use flag; report-ham.sieve names Trash.
SPECIAL_USE_MAILBOXES = {"Drafts": r"\Drafts", "Junk": r"\Junk", "Sent": r"\Sent", "Trash": r"\Trash"}
# A message moved out of Junk into these is thrown away, not declared ham.
NOT_HAM_MAILBOXES = ("Trash",)
# Local senders (cron, double bounces) reach a person through these.
LOCAL_ADDRESSES = ("postmaster", "root")

# The mail volume's size as the stack sets it: when it grows, components/volume_size.py has grown the
# disk, and this file's change makes the push grow the filesystem on it, online. Where the mail does
# not live on a volume of its own (the lab) there is nothing to grow.
MAIL_VOLUME = "/etc/mail-cluster/mail-volume"
GROW_MAIL_FILESYSTEM = f'if mountpoint -q {USERS_HOME}; then resize2fs "$(findmnt -n -o SOURCE {USERS_HOME})"; fi'

SERVICES = {
    "mail-volume": GROW_MAIL_FILESYSTEM,
    "postfix": postfix.SERVICE["postfix"],
    # vmail and its home come from sysusers.d/tmpfiles.d files in this tree: create them before
    # Dovecot reads a config that names vmail (on a fresh VM nothing else creates them).
    "dovecot": " && ".join(
        (f"systemd-sysusers {SYSUSERS}", f"systemd-tmpfiles --create {TMPFILES}", "systemctl reload-or-restart dovecot")
    ),
    # The drop-in only acts at Dovecot's next start: systemd re-reads it, nothing restarts.
    "dovecot-unit": "systemctl daemon-reload",
}


def rspamd_controller_password(keys: KeyMaterial) -> str:
    """The password the maildrops give rspamd's controller on every smtp-in host for learn_spam /
    learn_ham (rspamd asks it of any client outside its secure_ip). Derived from the doveadm password,
    so no new secret has to be generated or stored; the derivation is one-way."""
    return hmac.new(keys.doveadm_password.encode(), b"rspamd-controller", hashlib.sha256).hexdigest()


def mail_replica(stack: Stack, host: Host) -> str:
    """Where this maildrop's replicator pushes changes: the other maildrop's doveadm server."""
    return f"tcp:{stack.fqdn(stack.peer(host))}:{stack.ports.doveadm}"


def rspamd_controllers(stack: Stack) -> list[str]:
    """Every smtp-in host's rspamd controller on its site-local address, as `rspamc -h` takes it."""
    return [f"[{h.ipv6}]:{stack.ports.rspamd_controller}" for h in stack.hosts.smtp_in]


def mynetworks(stack: Stack) -> tuple[str, ...]:
    """Only the smtp-in hosts (and localhost) hand mail to a maildrop."""
    smtp_in = [a for h in stack.hosts.smtp_in for a in (f"[{h.ipv6}]/128", f"{h.ipv4}/32")]
    return (*postfix.LOCALHOST_NETWORKS, *smtp_in)


def virtual_maildrop_entries(stack: Stack) -> dict[str, str]:
    """<mailbox>@<maildrop domain> -> <mailbox> (Dovecot's user), plus postmaster and root to a person."""
    domain = stack.service_name(ROLE)
    entries = {f"{name}@{domain}": name for name in stack.mailbox_names}
    for local in LOCAL_ADDRESSES:
        entries.setdefault(f"{local}@{domain}", postfix.root_address(stack))
    return entries


def postfix_files(stack: Stack, host: Host) -> dict[str, FileSpec]:
    values = postfix.base_values(stack, host, ROLE, mynetworks=mynetworks(stack))
    # The maildrop domain is virtual (Dovecot's), so it must not be $myhostname, which Postfix
    # delivers locally: the host is known by its own name, and unqualified addresses (the users in
    # virtual-maildrop, cron's root) get the maildrop domain.
    values.update(myhostname=stack.fqdn(host), myorigin=stack.service_name(ROLE), mydestination=["localhost"])
    reload = ("postfix",)
    main_cf = render_template(
        ROLE,
        "/etc/postfix/main.cf",
        **values,
        maildrop_domain=stack.service_name(ROLE),
        virtual_maildrop=VIRTUAL_MAILDROP,
    )
    return {
        "/etc/postfix/main.cf": FileSpec(main_cf, reload=reload),
        "/etc/postfix/master.cf": FileSpec(render_template(ROLE, "/etc/postfix/master.cf", **values), reload=reload),
        VIRTUAL_MAILDROP: FileSpec(
            render_template(ROLE, VIRTUAL_MAILDROP, virtual_maildrop_entries=virtual_maildrop_entries(stack)),
            postmap=True,
        ),
        **postfix.aliases_file(stack),
    }


def dovecot_files(stack: Stack, host: Host, keys: KeyMaterial) -> dict[str, FileSpec]:
    reload = ("dovecot",)
    conf = render_template(
        ROLE,
        DOVECOT_CONF,
        users_file=USERS_FILE,
        userdb_default_fields=f"uid=vmail gid=vmail home={USERS_HOME}/%n",
        special_use_mailboxes=SPECIAL_USE_MAILBOXES,
        tls_cert_file=tls_cert_path(stack),
        tls_key_file=tls_key_path(stack),
        tls_min_protocol=tls.MIN_PROTOCOL,
        tls_ciphers=tls.CIPHERS,
        haproxy_trusted_networks=haproxy_trusted_networks(stack),
        imaps_port=stack.ports.imaps,
        managesieve_port=stack.ports.managesieve,
        doveadm_port=stack.ports.doveadm,
        doveadm_password=keys.doveadm_password,
        mail_replica=mail_replica(stack, host),
        sieve_dir=SIEVE_DIR,
    )
    return {
        # It holds doveadm_password (as in the case study): Dovecot's processes only.
        DOVECOT_CONF: FileSpec(conf, mode=0o640, group="dovecot", reload=reload),
        USERS_FILE: FileSpec(
            dovecot.passwd_file(stack.mailbox_names, keys.password_hashes),
            mode=dovecot.USERS_FILE_MODE,
            group=dovecot.USERS_FILE_GROUP,
        ),
        SYSUSERS: FileSpec(
            render_template(ROLE, SYSUSERS, vmail_id=VMAIL_ID, users_home=USERS_HOME),
            reload=reload,
        ),
        TMPFILES: FileSpec(
            render_template(
                ROLE,
                TMPFILES,
                users_home=USERS_HOME,
                users_parent=str(PurePosixPath(USERS_HOME).parent),
            ),
            reload=reload,
        ),
    }


def sieve_files(stack: Stack, keys: KeyMaterial) -> dict[str, FileSpec]:
    """Global Sieve scripts, the IMAPSieve reports and the rspamc scripts they pipe to."""
    scripts = {
        f"{SIEVE_DIR}/default.sieve": {},
        f"{SIEVE_DIR}/before.d/10-junk.sieve": {"spam_header": SPAM_HEADER},
        f"{SIEVE_DIR}/after.d/90-site.sieve": {},
        f"{SIEVE_DIR}/report-spam.sieve": {"learn_spam_script": LEARN_SPAM},
        f"{SIEVE_DIR}/report-ham.sieve": {"learn_ham_script": LEARN_HAM, "not_ham_mailboxes": NOT_HAM_MAILBOXES},
    }
    files = {
        path: FileSpec(render_template(ROLE, path, **values), reload=("sieve",)) for path, values in scripts.items()
    }
    for script, learn, caller in (
        (LEARN_SPAM, "learn_spam", "report-spam.sieve"),
        (LEARN_HAM, "learn_ham", "report-ham.sieve"),
    ):
        content = render_template(
            ROLE,
            f"{SIEVE_DIR}/{script}",
            learn=learn,
            caller=caller,
            controllers=rspamd_controllers(stack),
            password_file=RSPAMD_PASSWORD_FILE,
            timeout=LEARN_TIMEOUT,
        )
        files[f"{SIEVE_DIR}/{script}"] = FileSpec(content, mode=0o755)
    # Read by the learn scripts, which run as vmail.
    password = render_template(ROLE, RSPAMD_PASSWORD_FILE, password=rspamd_controller_password(keys))
    files[RSPAMD_PASSWORD_FILE] = FileSpec(password, mode=0o640, group="vmail", reload=("sieve",))
    return files


def sieve_service(sieve_paths: list[str]) -> str:
    """What the "sieve" service does when a global script or the learn password changes: compile
    the scripts (Dovecot runs them as vmail, which cannot write the .svbin next to them), and give
    the password file to vmail, which on a fresh VM only exists once the dovecot service ran."""
    dirs = sorted({str(PurePosixPath(p).parent) for p in sieve_paths})
    return " && ".join([f"chgrp vmail {RSPAMD_PASSWORD_FILE}", *(f"sievec -c {DOVECOT_CONF} {d}" for d in dirs)])


def checks(sieve_paths: list[str]) -> tuple[Check, ...]:
    # doveconf reports problems as "doveconf: Warning: ..." and exits 0: any stderr fails the check.
    doveconf = f'err=$(doveconf -n -c {DOVECOT_CONF} 2>&1 >/dev/null) && [ -z "$err" ] || {{ echo "$err"; exit 1; }}'
    unit = 'err=$(systemd-analyze verify dovecot.service 2>&1) && [ -z "$err" ] || { echo "$err"; exit 1; }'
    # -d writes a dump of the compiled script to stdout instead of a binary anywhere: a compile check.
    sievec = (Check(f"sievec {p}", ("sievec", "-c", DOVECOT_CONF, "-d", p, "-")) for p in sieve_paths)
    return (
        *postfix.CHECKS,
        Check("postconf -n", ("postconf", "-n")),
        Check("doveconf -n", ("sh", "-c", doveconf)),
        Check("systemd-sysusers --dry-run", ("systemd-sysusers", "--dry-run", SYSUSERS)),
        # systemd-analyze verify names a bad key or command line and still exits 0: any output fails.
        Check("systemd-analyze verify dovecot.service", ("sh", "-c", unit)),
        *sievec,
    )


def render(stack: Stack, host: Host, keys: KeyMaterial) -> HostTree:
    files = {
        **postfix_files(stack, host),
        **dovecot_files(stack, host, keys),
        **sieve_files(stack, keys),
        **postfix.tls_files(stack, keys, reload=("postfix", "dovecot")),
        UNIT_DROP_IN: FileSpec(
            render_template(ROLE, UNIT_DROP_IN, dsync_parameters=DSYNC_ON_START, users_home=USERS_HOME),
            reload=("dovecot-unit",),
        ),
        MAIL_VOLUME: FileSpec(f"size_gib={stack.shape(host).mail_gib}\n", reload=("mail-volume",)),
    }
    sieve_paths = sorted(p for p in files if p.endswith(".sieve"))
    return HostTree(
        host=host.name,
        role=ROLE,
        files=files,
        checks=checks(sieve_paths),
        # Applied in name order: dovecot (creates vmail) before sieve (needs it).
        services={**SERVICES, "sieve": sieve_service(sieve_paths)},
        probes=host_probes(stack, host),
    )


def haproxy_trusted_networks(stack: Stack) -> list[str]:
    """Who may open an IMAPS or ManageSieve connection with a PROXY header naming the client: the
    frontends, and the host itself, whose push probes its own listeners after a reload (a local
    process could name any client anyway)."""
    return [a for h in stack.hosts.frontend for a in h.site_local_addresses] + ["127.0.0.1", "::1"]


def host_probes(stack: Stack, host: Host) -> tuple[Probe, ...]:
    """Mail in (a RCPT for a mailbox, then LHLO where Postfix's virtual_transport points) and mail
    out to users (IMAPS and ManageSieve greetings, each opened by a PROXY header as the frontends
    open them). All from localhost: only the smtp-in hosts and mynetworks may hand mail to a
    maildrop (the recipient check, virtual-maildrop, applies to every client), and only the
    frontends and the host itself may send a PROXY header."""
    local, ports, helo = probes.LOCALHOST, stack.ports, stack.fqdn(host)
    mailbox = f"{stack.mailbox_names[0]}@{stack.service_name(ROLE)}"
    imap = stack.service_name("imap")
    return (
        probes.smtp(f"smtp {ports.smtp} RCPT TO {mailbox}", local, ports.smtp, helo=helo, rcpt=(mailbox,)),
        probes.lmtp("lmtp LHLO (virtual_transport)", "virtual_transport", helo),
        probes.banner(f"imaps {ports.imaps} greeting", local, ports.imaps, "* OK", tls_name=imap, proxy_protocol=True),
        probes.banner(
            f"managesieve {ports.managesieve} greeting",
            local,
            ports.managesieve,
            '"IMPLEMENTATION"',
            proxy_protocol=True,
        ),
    )
