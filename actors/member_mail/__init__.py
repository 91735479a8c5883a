"""MemberMail: transactional mail to members through an outbox (issue 12).

``models`` (the outbox table, states, settings), ``queries`` (reads), ``outbox``
(enqueueing, the at-most-once key, start-up recovery), ``templates`` (text and HTML
through bottle's SimpleTemplate, the QR code), ``smtp`` (the transport over smtplib)
and ``dispatcher`` (draining the outbox). The actor on the bus comes later.
"""
