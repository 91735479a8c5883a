% rebase('layout.html.tpl', title='Membership lapsed')
<p>Hello {{name}},</p>
<p>your {{space}} membership lapsed on {{since}}: your dues were not paid within the grace period.</p>
<p>A payment to your dues address reinstates it: <code>{{address}}</code></p>
<p>We hope to see you back.</p>
