% rebase('layout.html.tpl', title='Dues reminder')
<p>Hello {{name}},</p>
<p>your {{space}} dues of {{cad(dues_cents)}} CAD are due on {{due_date}}, in {{days}} day{{'' if days == 1 else 's'}}.</p>
% if address:
<p>Pay to your dues address: <a href="{{uri}}"><code>{{address}}</code></a></p>
% else:
<p>You can pay at the space (cash or e-transfer).</p>
% end
