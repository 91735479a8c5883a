% rebase('layout.html.tpl', title='Welcome to ' + space)
<p>Hello {{name}},</p>
<p>welcome to {{space}}! You are member <b>{{handle}}</b> on the {{plan}} plan:
{{cad(dues_cents)}} CAD per {{period}}.</p>
% if address:
<p>Pay your dues in bitcoin to your own address:</p>
<p><a href="{{uri}}"><img src="cid:{{qr_cid}}" alt="QR code of your dues address" width="200" height="200"></a></p>
<p><code>{{address}}</code></p>
<p>Every payment to this address is counted as yours; you get a receipt for each.</p>
% else:
<p>You can pay your dues at the space (cash or e-transfer); you get a receipt for each payment.</p>
% end
<p>See you at the space,<br>{{space}}</p>
