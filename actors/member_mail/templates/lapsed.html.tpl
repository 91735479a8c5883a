% rebase('layout.html.tpl', title='Membership lapsed')
<p>Hello {{name}},</p>
<p>your {{space}} membership lapsed on {{since}}: your dues were not paid within the grace period.</p>
% if address:
<p>A payment to your dues address reinstates it: <code>{{address}}</code></p>
% else:
<p>A payment at the space (cash or e-transfer) reinstates it.</p>
% end
<p>We hope to see you back.</p>
