"""``fleet2ban notifier``: ban and unban decisions sent to webhooks, Slack and e-mail, at least once.

- :mod:`.outbox` (pure): per destination, the decisions waiting, the filter, the digest interval and the
  retry backoff; :class:`.outbox.Commits`: which offsets of ``decisions`` every destination is done with.
- :mod:`.render` (pure): the message bodies (generic JSON, Slack, e-mail) for one decision or a digest.
- :mod:`.send`: HTTP (httpx) and SMTP (smtplib, STARTTLS) delivery.
- :mod:`.agent`: the Kafka shell: its own consumer group on ``decisions``, one delivery thread per
  destination (a failing one never holds the others up), offsets committed only once every destination
  has delivered (or dropped, beyond ``max_pending``) the records before them; heartbeats on ``reports``.
"""
